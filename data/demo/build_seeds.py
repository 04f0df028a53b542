"""Regenerate the demo seed prompts: ``seeds.jsonl`` (300 training prompts) and
``eval.jsonl`` (48 held-out prompts), 100 / 16 per curriculum level.

Requirements: Python >= 3.10 and ``reasoning-gym==0.1.25`` (Apache-2.0). It is
NOT a dependency of llmdistill; install it in a throwaway venv, e.g.::

    python3 -m venv /tmp/rgvenv && /tmp/rgvenv/bin/pip install reasoning-gym==0.1.25
    /tmp/rgvenv/bin/python data/demo/build_seeds.py            # rewrite the files
    /tmp/rgvenv/bin/python data/demo/build_seeds.py --check    # verify they are current

Each level is about half math/reasoning and half general assistant requests:

* reasoning-gym generators (``RG_SPECS``) with small, level-appropriate
  configs and fixed seeds; every arithmetic gold answer is re-checked here.
* handwritten word problems (``WORD_PROBLEMS``); the gold answer is computed
  from the arithmetic expression stored next to each problem.
* handwritten general prompts (``GENERAL``), original to this project.

Handwritten items carry an explicit seed/eval split; generator items are drawn
from a pool, deduplicated, and split seed-first. Output is byte-for-byte
deterministic for a given reasoning-gym version.

Deliberately NOT used: reasoning-gym's ``gsm_symbolic`` (its generators were
produced from Apple's GSM-Symbolic templates, CC BY-NC-ND 4.0, which are in
turn templates of the GSM8K *test* split) and ``aiw`` (a published eval set).
See SOURCES.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from difflib import SequenceMatcher
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHUFFLE_SEED = 20240601  # order of lines within each level
N_SEED, N_EVAL = 100, 16  # per level

# --------------------------------------------------------------------------
# reasoning-gym generators.
# (dataset, config kwargs, base seed, n_seed, n_eval, tags, filter name)
# --------------------------------------------------------------------------
RG_SPECS = {
    1: [
        ("basic_arithmetic", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2,
                                  operators=("+", "-"), allow_parentheses=False,
                                  allow_negation=False, format_style="natural"),
         1101, 22, 3, ["math"], "nonneg_result"),
        ("products", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1),
         1102, 10, 2, ["math"], "no_trivial_factor"),
        ("leg_counting", dict(min_animals=1, max_animals=2, min_instances=1, max_instances=4),
         1103, 6, 1, ["math", "counting"], "regular_plurals"),
    ],
    2: [
        ("chain_sum", dict(min_terms=3, max_terms=3, min_digits=1, max_digits=2),
         2101, 8, 1, ["math"], "clean_expression"),
        ("basic_arithmetic", dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1,
                                  operators=("+", "-", "*"), allow_parentheses=True,
                                  allow_negation=False),
         2102, 8, 1, ["math"], "clean_expression"),
        ("simple_equations", dict(min_terms=2, max_terms=2, min_value=1, max_value=12),
         2103, 7, 1, ["math", "algebra"], None),
        ("family_relationships", dict(min_family_size=4, max_family_size=5),
         2104, 5, 1, ["reasoning"], None),
        ("time_intervals", dict(task_types=["time"]),
         2105, 4, 1, ["math", "time"], None),
    ],
    3: [
        ("basic_arithmetic", dict(min_terms=4, max_terms=4, min_digits=1, max_digits=1,
                                  operators=("+", "-", "*"), allow_parentheses=True,
                                  allow_negation=False),
         3101, 6, 1, ["math"], "clean_expression_with_parens"),
        ("simple_equations", dict(min_terms=3, max_terms=3, min_value=1, max_value=30),
         3102, 5, 1, ["math", "algebra"], None),
        ("number_sequence", dict(min_terms=5, max_terms=6, max_complexity=2,
                                 min_value=-20, max_value=20),
         3103, 5, 1, ["math", "pattern"], "plain_sequence_rule"),
        ("syllogism", dict(invalid_ratio=0.5),
         3104, 5, 1, ["logic"], None),
        ("lcm", dict(min_numbers=2, max_numbers=2, min_value=2, max_value=20),
         3105, 4, 0, ["math"], "distinct_numbers"),
    ],
}

# number_sequence prompts are a bare "a, b, c, ?"; give the assistant an instruction.
SEQUENCE_PREFIX = "What number comes next in this sequence? "

# --------------------------------------------------------------------------
# Handwritten word problems: (prompt, arithmetic expression for the answer).
# --------------------------------------------------------------------------
WORD_PROBLEMS = {
    1: {  # one step
        "seed": [
            ("Maya has 7 stickers and her friend gives her 5 more. How many stickers does Maya have now?", "7 + 5"),
            ("A box holds 6 eggs. How many eggs are in 4 boxes?", "6 * 4"),
            ("There were 23 birds on a wire and 8 flew away. How many birds are still on the wire?", "23 - 8"),
            ("Twenty cookies are shared equally among 4 children. How many cookies does each child get?", "20 / 4"),
            ("A bus has 12 passengers. At the next stop 9 more people get on. How many passengers are on the bus now?", "12 + 9"),
            ("A pencil costs 3 dollars. How much do 7 pencils cost in dollars?", "3 * 7"),
            ("A farmer picked 40 apples and sold 14 of them at the market. How many apples does he have left?", "40 - 14"),
            ("Sophie practices the piano every single day. On how many days does she practice in 9 weeks?", "7 * 9"),
            ("A classroom has 5 rows with 6 desks in each row. How many desks are in the classroom?", "5 * 6"),
            ("A ribbon 36 centimeters long is cut into 3 equal pieces. How long is each piece in centimeters?", "36 / 3"),
            ("A garden has 9 red tulips and 14 yellow tulips. How many tulips are in the garden?", "9 + 14"),
            ("Each tricycle has 3 wheels. How many wheels do 8 tricycles have?", "3 * 8"),
        ],
        "eval": [
            ("Leo read 15 pages yesterday and 18 pages today. How many pages has he read in total?", "15 + 18"),
            ("Sara saved 50 dollars and spent 18 dollars on a book. How many dollars does she have left?", "50 - 18"),
        ],
    },
    2: {  # two steps
        "seed": [
            ("Jonah buys 3 notebooks at 4 dollars each and one pen for 2 dollars. How much does he spend in total?", "3 * 4 + 2"),
            ("A baker makes 48 muffins and sells 30. She packs the rest equally into 3 boxes. How many muffins go in each box?", "(48 - 30) / 3"),
            ("A library had 120 books. It received 35 new books and then lent out 42. How many books are on its shelves now?", "120 + 35 - 42"),
            ("Priya walks 2 kilometers to school and 2 kilometers back home each day. How many kilometers does she walk in 5 school days?", "(2 + 2) * 5"),
            ("A shirt costs 25 dollars and is on sale for 20% off. What is the sale price in dollars?", "25 * (1 - 0.20)"),
            ("There are 4 packs of juice with 6 bottles in each pack. After 5 bottles are drunk, how many bottles are left?", "4 * 6 - 5"),
            ("Carlos earns 12 dollars an hour. He works 6 hours on Saturday and 4 hours on Sunday. How much does he earn over the weekend?", "12 * (6 + 4)"),
            ("A water tank holds 200 liters. It is half full, and then 30 liters are used. How many liters are left in the tank?", "200 / 2 - 30"),
            ("Nina has twice as many stamps as Omar, and Omar has 17 stamps. How many stamps do they have together?", "17 * 2 + 17"),
            ("A train travels at 60 kilometers per hour for 2 hours and then at 45 kilometers per hour for 1 hour. How far does it travel in total?", "60 * 2 + 45 * 1"),
            ("Museum tickets cost 8 dollars for adults and 5 dollars for children. How much do 2 adult tickets and 3 child tickets cost?", "2 * 8 + 3 * 5"),
            ("A class of 28 students is split into teams of 4, and each team needs 2 balls. How many balls are needed?", "28 / 4 * 2"),
            ("Ivan had 65 dollars. He bought a game for 38 dollars and then got 20 dollars as a birthday gift. How much money does he have now?", "65 - 38 + 20"),
            ("One cake needs 3 cups of flour. You want to bake 4 cakes and already have 5 cups. How many more cups of flour do you need?", "3 * 4 - 5"),
            ("A phone battery starts at 100 percent and loses 15 percent every hour. What is the charge after 4 hours, in percent?", "100 - 15 * 4"),
            ("Lena is 9 years old and her mother is 4 times as old. How old will her mother be in 5 years?", "9 * 4 + 5"),
            ("A cyclist rides 18 kilometers in the morning and twice that distance in the afternoon. How many kilometers does she ride in total?", "18 + 18 * 2"),
            ("Pencils are sold only in packs of 10, and each pack costs 4 dollars. How much does it cost to get at least 35 pencils?", "ceil(35 / 10) * 4"),
        ],
        "eval": [
            ("A phone plan costs 15 dollars a month plus 2 dollars for each gigabyte of data. What is the bill for a month with 6 gigabytes?", "15 + 2 * 6"),
            ("It was 4 degrees in the morning. The temperature rose 9 degrees by noon and fell 6 degrees by evening. What was the evening temperature?", "4 + 9 - 6"),
            ("A jar holds 45 candies. Three friends each take 8 candies. How many candies are left in the jar?", "45 - 3 * 8"),
        ],
    },
    3: {  # three or more steps
        "seed": [
            ("Emma buys 5 notebooks at 3 dollars each and 2 packs of pens at 4 dollars per pack. She pays with a 50-dollar bill. How much change does she get?", "50 - (5 * 3 + 2 * 4)"),
            ("A farmer collects 42 eggs a day. He keeps 6 eggs each day for his family and sells the rest in cartons of 12. How many cartons does he sell in one week?", "(42 - 6) * 7 / 12"),
            ("A school orders 12 boxes of markers with 24 markers in each box and shares them equally among 32 classrooms. How many markers does each classroom get?", "12 * 24 / 32"),
            ("Jake runs 3 kilometers on Monday, twice as far on Wednesday, and 4 kilometers less than Wednesday on Friday. How many kilometers does he run in total?", "3 + 3 * 2 + (3 * 2 - 4)"),
            ("A theater has 15 rows of 20 seats. On Friday three quarters of the seats are sold at 9 dollars each. How much money do the tickets bring in?", "15 * 20 * 3 / 4 * 9"),
            ("Rosa buys a bike for 240 dollars. She pays 60 dollars up front and the rest in 6 equal monthly payments. How much is each payment?", "(240 - 60) / 6"),
            ("A tank holds 500 liters of water. A pump removes 35 liters per minute for 8 minutes, then a hose adds 20 liters per minute for 5 minutes. How many liters are in the tank now?", "500 - 35 * 8 + 20 * 5"),
            ("Three friends order meals costing 22, 26 and 30 dollars. They split the total equally, and each also leaves a 4-dollar tip. How much does each friend pay?", "(22 + 26 + 30) / 3 + 4"),
            ("A car uses 6 liters of fuel per 100 kilometers, and fuel costs 2 dollars per liter. How much does the fuel cost for a 450-kilometer trip?", "450 / 100 * 6 * 2"),
            ("Ali has 3 times as many books as Ben, and Ben has 5 more books than Cara. Cara has 7 books. How many books do the three of them have together?", "7 + (7 + 5) + 3 * (7 + 5)"),
            ("A baker has a 5-kilogram bag of flour and uses 250 grams for each loaf. After baking 14 loaves, how many grams of flour are left?", "5 * 1000 - 250 * 14"),
            ("A printer prints 18 pages per minute. How many minutes does it take to print 6 copies of a 45-page report?", "6 * 45 / 18"),
            ("A hotel room costs 90 dollars per night. A family stays 4 nights and gets 10% off the total. How much do they pay?", "90 * 4 * (1 - 0.10)"),
            ("Sam already has 40 dollars and saves 15 dollars every week. How many weeks will it take him to afford a 160-dollar jacket?", "(160 - 40) / 15"),
            ("A rectangular garden is 12 meters long and 8 meters wide. Fencing costs 5 dollars per meter. How much does it cost to fence the whole garden?", "2 * (12 + 8) * 5"),
            ("A class has 30 students. 40% of them walk to school, one third of the others take the bus, and the rest are driven. How many students are driven?", "(30 - 30 * 0.40) * (1 - 1 / 3)"),
            ("A factory makes 250 toys a day, but 4% of them are faulty and thrown away. How many good toys does it make in 5 days?", "250 * (1 - 0.04) * 5"),
            ("Grace's book has 312 pages and she has already read 96. If she reads 24 pages a day, how many more days will she need to finish it?", "(312 - 96) / 24"),
            ("A shop buys shirts for 12 dollars each and sells them for 20 dollars each. How many shirts must it sell to make 400 dollars of profit?", "400 / (20 - 12)"),
            ("A bus starts with 40 passengers. At the first stop a quarter of them get off and 7 get on. At the second stop 12 get off. How many passengers are on the bus now?", "40 - 40 / 4 + 7 - 12"),
            ("Tina is 4 years older than her brother. In 6 years the sum of their ages will be 40. How old is Tina now?", "(40 - 2 * 6 + 4) / 2"),
            ("Two pipes fill a pool together. One pours 30 liters per minute and the other 20 liters per minute. How many minutes do they need to fill 1,500 liters?", "1500 / (30 + 20)"),
            ("Oliver buys 4 kilograms of apples at 3 dollars per kilogram and 2 kilograms of cherries at 8 dollars per kilogram, then uses a 5-dollar coupon. How much does he pay?", "4 * 3 + 2 * 8 - 5"),
            ("A runner covers the first 20 kilometers of a 42-kilometer race at 6 minutes per kilometer and the rest at 7 minutes per kilometer. How many minutes does the race take her?", "20 * 6 + (42 - 20) * 7"),
            ("A theater sold 180 tickets. Two thirds were adult tickets at 12 dollars and the rest were child tickets at 7 dollars. What was the total revenue in dollars?", "180 * 2 / 3 * 12 + 180 / 3 * 7"),
        ],
        "eval": [
            ("One plant is 14 centimeters tall and grows 3 centimeters a week. Another is 26 centimeters tall and grows 1 centimeter a week. After how many weeks will they be the same height?", "(26 - 14) / (3 - 1)"),
            ("A company has 8 teams of 9 people. It hires 12 more people and then reorganizes everyone into teams of 7. How many teams are there now?", "(8 * 9 + 12) / 7"),
            ("A warehouse has 640 boxes. On Monday it ships a quarter of them, on Tuesday it ships a third of what is left, and on Wednesday 50 new boxes arrive. How many boxes are there now?", "640 * 3 / 4 * 2 / 3 + 50"),
            ("Two cars leave the same town at the same time in opposite directions, one at 55 kilometers per hour and the other at 65 kilometers per hour. How far apart are they after 3 hours?", "(55 + 65) * 3"),
        ],
    },
}

# --------------------------------------------------------------------------
# Handwritten general prompts: (prompt, tag) or (prompt, tag, gold answer).
# --------------------------------------------------------------------------
GENERAL = {
    1: {  # short factual questions and one-step tasks
        "seed": [
            ("What is the capital of Italy?", "general"),
            ('Give a synonym for "happy".', "language"),
            ("How many days are there in a leap year?", "general"),
            ("What color do you get when you mix blue and yellow?", "general"),
            ('Translate "thank you" into Spanish.', "language"),
            ("What is the largest planet in our solar system?", "science"),
            ('What is the opposite of "ancient"?', "language"),
            ("Which gas do plants take in from the air to make food?", "science"),
            ("At what temperature in Celsius does water boil at sea level?", "science"),
            ('Who wrote the play "Romeo and Juliet"?', "general"),
            ('What is the plural of "mouse"?', "language"),
            ("How many continents are there on Earth?", "geography"),
            ("What does a thermometer measure?", "science"),
            ("Name a mammal that can fly.", "science"),
            ("What is the chemical symbol for gold?", "science"),
            ('Rewrite this sentence in the past tense: "She walks to school."', "language"),
            ("Which ocean lies between Africa and Australia?", "geography"),
            ("What language do most people in Brazil speak?", "geography"),
            ('Give one word that rhymes with "cat".', "language"),
            ("What is the main ingredient in guacamole?", "cooking"),
            ("What does the abbreviation CPU stand for?", "programming"),
            ("Which organ pumps blood around the human body?", "science"),
            ("Which season comes after winter?", "general"),
            ("What is the common name for H2O?", "science"),
            ('Correct the spelling of this word: "recieve".', "language"),
            ("What is the tallest mountain on Earth?", "geography"),
            ("What do bees make from the nectar of flowers?", "science"),
            ("Name a fruit that is yellow when it is ripe.", "general"),
            ('What is the past tense of "run"?', "language"),
            ("In which country are the pyramids of Giza?", "history"),
            ("Which planet is known as the Red Planet?", "science"),
            ("What is a baby cat called?", "general"),
            ('Give an antonym for "generous".', "language"),
            ("Which musical instrument usually has 88 keys?", "general"),
            ("In which city is the Eiffel Tower?", "geography"),
            ("Name one of the three primary colors of paint.", "general"),
            ("Which metal is liquid at room temperature?", "science"),
            ("How many legs does a spider have?", "science"),
            ("What is the first letter of the Greek alphabet?", "language"),
            ('Turn this statement into a question: "The store opens at nine."', "language"),
            ("Which vitamin does the skin make when it is exposed to sunlight?", "health"),
            ("What is a group of wolves called?", "language"),
            ("Who painted the Mona Lisa?", "history"),
            ("Is a dolphin a fish or a mammal?", "science"),
            ("Which keyboard shortcut usually copies selected text on Windows?", "programming"),
            ("What is the currency of the United Kingdom?", "general"),
            ("What is the longest river in Africa?", "geography"),
            ("What word describes an animal that eats only plants?", "science"),
            ("Which programming language is named after a type of coffee from an Indonesian island?", "programming"),
            ("What is the main language spoken in Mexico?", "geography"),
        ],
        "eval": [
            ("What is the hardest natural substance on Earth?", "science"),
            ("Which animal is often called the king of the jungle?", "general"),
            ("How many sides does a hexagon have?", "general"),
            ("What do you call a word that means the same as another word?", "language"),
            ("What is the smallest prime number?", "general"),
            ('What does "www" stand for in a web address?', "programming"),
            ("What is the name of the process in which liquid water turns into vapor?", "science"),
            ("What kind of tool is used to tighten a bolt?", "general"),
        ],
    },
    2: {  # short explanations, 2-3 sentence tasks, simple lists
        "seed": [
            ("Explain in two sentences why the sky looks blue.", "explain"),
            ("List three fruits that are rich in vitamin C.", "list"),
            ("In two or three sentences, describe what a volcano is.", "explain"),
            ("Give three tips for falling asleep faster.", "advice"),
            ("Explain the difference between weather and climate in two sentences.", "explain"),
            ("Write a short, polite message declining an invitation to a party.", "writing"),
            ("List four spices that are common in home kitchens.", "cooking"),
            ("What is a variable in programming? Give a beginner-friendly answer.", "programming"),
            ("Briefly explain what photosynthesis does for a plant.", "explain"),
            ("Name three ways to save water at home.", "list"),
            ("Write two sentences describing a rainy morning in a city.", "writing"),
            ("Why do we have leap years? Explain briefly.", "explain"),
            ("List three renewable sources of energy.", "list"),
            ("Explain what a noun is and give two examples.", "language"),
            ("How do you hard-boil an egg? Give the steps briefly.", "cooking"),
            ("Summarize the story of Cinderella in two sentences.", "writing"),
            ("What causes ocean tides? Answer in two sentences.", "explain"),
            ("Give three reasons why people keep a journal.", "list"),
            ("Explain to a teenager what a budget is, in two sentences.", "explain"),
            ("List three things to pack for a day at the beach.", "list"),
            ("What is the difference between a virus and a bacterium? Keep it short.", "explain"),
            ("Describe the water cycle in three short steps.", "explain"),
            ("Write a friendly one-line welcome message for a new coworker.", "writing"),
            ("What does recycling mean, and why does it help the environment?", "explain"),
            ("Name three important inventions from the 1800s.", "history"),
            ("What does a loop do in a computer program? Explain simply.", "programming"),
            ('What does the metaphor "time is money" mean?', "language"),
            ("Why do leaves change color in autumn? Answer briefly.", "explain"),
            ("List three habits that help keep teeth healthy.", "advice"),
            ('Rewrite this sentence to sound more formal: "Hey, can you send me that file?"', "writing"),
            ("Give three ideas for a quick vegetarian lunch.", "cooking"),
            ("Explain what inflation means in simple words.", "explain"),
            ("Name three animals that hibernate in winter.", "list"),
            ("What is a hypothesis? Give a short example.", "explain"),
            ("Describe how to make a cup of tea in four steps.", "cooking"),
            ("Why is regular exercise good for the heart? Answer in two sentences.", "health"),
            ("List three differences between cats and dogs as pets.", "list"),
            ("Briefly explain why people use a password manager.", "programming"),
            ("Describe the Renaissance in a couple of sentences.", "history"),
            ("Give three tips for writing a clear email.", "advice"),
            ("Explain gravity to a seven-year-old.", "explain"),
            ("Name three countries that share a border with Germany.", "geography"),
            ('Explain when to use "their", "there" and "they\'re".', "language"),
            ("List three things a spreadsheet is useful for.", "list"),
            ("How does a magnetic compass work? Answer briefly.", "explain"),
            ("Write a short thank-you note to a teacher.", "writing"),
            ('What does a file extension such as ".txt" or ".jpg" tell you?', "programming"),
            ("Give two advantages of cycling to work.", "advice"),
            ("Name the three main layers of the Earth.", "science"),
            ("What is composting, and why do gardeners do it?", "explain"),
        ],
        "eval": [
            ("Why does ice float on water instead of sinking?", "explain"),
            ("What does the United Nations do? Give a brief answer.", "history"),
            ("What is a bug in software? Explain briefly.", "programming"),
            ("Give three polite ways to ask someone to repeat what they said.", "language"),
            ("Describe the taste of a lemon to someone who has never eaten one.", "writing"),
            ("Give two reasons to wash your hands before cooking.", "health"),
            ("What does an adjective do? Give one example sentence.", "language"),
            ("List three famous landmarks in Asia.", "geography"),
        ],
    },
    3: {  # multi-step reasoning, comparisons, short plans, explain-why
        "seed": [
            ("Compare renting and buying a home: give one advantage of each.", "compare"),
            ("Make a simple three-week plan for a beginner who wants to start running.", "plan"),
            ("Why does a metal spoon feel colder than a wooden spoon when both are at room temperature? Explain step by step.", "explain"),
            ("All roses are flowers, and some flowers fade quickly. Can we conclude that some roses fade quickly? Explain.", "reasoning", "No"),
            ("Plan a balanced dinner for four people on a small budget.", "plan"),
            ("Why do we see lightning before we hear the thunder? Explain the reasoning.", "explain"),
            ("Compare a list and a dictionary in Python: when would you use each?", "programming"),
            ("You have a 3-liter jug and a 5-liter jug and unlimited water. Describe how to measure exactly 4 liters.", "reasoning"),
            ("Outline the steps to prepare for a job interview.", "plan"),
            ("In a vacuum, why do a heavy ball and a light ball fall at the same rate?", "explain"),
            ("Compare solar and wind power, giving one strength and one weakness of each.", "compare"),
            ("Plan a weekly routine for learning a new language with 30 minutes a day.", "plan"),
            ("Why does spreading salt on icy roads make the ice melt? Explain step by step.", "explain"),
            ("Compare email and instant messaging for communicating at work.", "compare"),
            ("A recipe calls for baking soda, but you only have baking powder. What should you think about before substituting it?", "cooking"),
            ("Explain why antibiotics do not help against the common cold.", "explain"),
            ("A program prints the wrong total for a shopping cart. Describe how you would track down the bug.", "programming"),
            ("Tom is taller than Ana, and Ana is taller than Raj. Who is the shortest of the three? Explain.", "reasoning", "Raj"),
            ("How is compound interest different from simple interest? Explain with a small example.", "explain"),
            ("Give a short plan for clearing out a cluttered garage in one weekend.", "plan"),
            ("Why do coastal cities usually have milder winters than cities far inland?", "explain"),
            ("Compare reading paper books with reading on an e-reader, giving two points for each.", "compare"),
            ("What are the trade-offs of using global variables in a program?", "programming"),
            ("Explain why bread dough made with yeast rises.", "explain"),
            ("Plan a one-day sightseeing trip in a city you have never visited before.", "plan"),
            ("A steel ship is much heavier than a pebble, yet the ship floats and the pebble sinks. Explain why.", "explain"),
            ("A shop opens every day except Sunday. It is Saturday evening and the shop has just closed. In how many days will it open again? Explain.", "reasoning", "2"),
            ("Why is it risky to reuse the same password on many websites?", "explain"),
            ("Compare a hybrid car and a fully electric car for someone who often drives long distances.", "compare"),
            ("What causes the seasons on Earth? Explain the reasoning.", "explain"),
            ("Suggest a step-by-step approach for learning to touch type.", "plan"),
            ("How did sailors use the stars to navigate before modern instruments?", "history"),
            ("Explain why binary search is faster than checking every item in a sorted list.", "programming"),
            ("A friend keeps forgetting to water their plants. Suggest a simple system to fix this.", "advice"),
            ("Give two reasons why biodiversity matters for an ecosystem, and explain each.", "explain"),
            ("Compare cooking rice in a pot on the stove with using a rice cooker.", "compare"),
            ("Explain how a vaccine prepares the immune system to fight a disease.", "explain"),
            ("Outline how to write a short persuasive paragraph.", "plan"),
            ("Anna, Ben and Carla each own one pet: a cat, a dog or a fish. Anna does not own the dog, and Ben owns the fish. Who owns the dog? Explain.", "reasoning", "Carla"),
            ("Why does the Moon appear to change shape over a month?", "explain"),
            ("What are the main pros and cons of working from home?", "compare"),
            ("Why does a recursive function need a base case?", "programming"),
            ("Explain how supply and demand can push up the price of concert tickets.", "explain"),
            ("Describe the steps to fix a flat bicycle tire.", "plan"),
            ("Give two reasons why the Industrial Revolution began in Britain.", "history"),
            ("Explain why sound travels faster in water than in air.", "explain"),
            ("A glass is filled to the brim with water and an ice cube is floating in it. Will the glass overflow when the ice melts? Explain.", "reasoning", "No"),
            ("Why is version control useful when several people work on the same code?", "programming"),
            ("Why can deserts get very cold at night even after a hot day?", "explain"),
            ("Make a short plan to reduce food waste in a household.", "plan"),
        ],
        "eval": [
            ("Why do onions make people cry, and what can you do to reduce it?", "explain"),
            ("Plan a morning routine that helps someone get to work on time.", "plan"),
            ("Compare a museum visit and a nature hike as a family outing.", "compare"),
            ("Why did the invention of the printing press change Europe so much?", "history"),
            ("How would you arrange a small home bookshelf so books are easy to find? Explain your choices.", "plan"),
            ("Using the idea of energy, explain why a heavy backpack makes walking uphill harder.", "explain"),
            ("If it rains, the football match is cancelled. The match was not cancelled. Did it rain? Explain your reasoning.", "reasoning", "No"),
            ("When should a small team write automated tests, and what do they gain from them?", "programming"),
        ],
    },
}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def record(prompt: str, level: int, source: str, answer, tags) -> dict:
    """One output line, with keys in the documented order."""
    return {"prompt": prompt, "level": level, "source": source,
            "answer": answer, "tags": list(tags)}


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def eval_expr(expr: str) -> str:
    """Evaluate a word-problem expression and format the (integer) gold answer."""
    value = eval(expr, {"__builtins__": {}, "ceil": math.ceil})  # constants only
    if abs(value - round(value)) > 1e-9:
        raise ValueError(f"non-integer answer {value!r} for {expr!r}")
    return str(int(round(value)))


def keep(filter_name: str | None, entry: dict) -> bool:
    meta = entry["metadata"]
    if filter_name is None:
        return True
    if filter_name == "nonneg_result":
        return int(entry["answer"]) >= 0 and "0" not in meta["expression"].split()
    if filter_name == "no_trivial_factor":
        return all(int(x) >= 2 for x in meta["expression"].split("*"))
    if filter_name == "regular_plurals":  # the generator writes "fireflys", "sheeps"
        irregular = ("s", "sh", "ch", "y", "deer", "sheep", "shrimp", "woodlouse")
        return all(n == 1 or not name.endswith(irregular) for name, n in meta["animals"].items())
    expr = meta.get("expression", "")
    tokens = expr.split()
    if filter_name == "clean_expression":  # no "-4" / "-(" literals, no 0, no "( ( ... ) )"
        return (not any(t.startswith("-") and t != "-" for t in tokens)
                and "0" not in tokens and "( (" not in expr and ") )" not in expr)
    if filter_name == "clean_expression_with_parens":
        return keep("clean_expression", entry) and "(" in tokens
    if filter_name == "plain_sequence_rule":  # skip halving/squaring and flat runs
        seq = meta["sequence"]
        return not re.search(r"halve|square", meta["rule"]) and len(set(seq)) == len(seq)
    if filter_name == "distinct_numbers":
        return len(set(meta["numbers"])) == len(meta["numbers"])
    raise KeyError(filter_name)


def check_answer(name: str, entry: dict) -> bool:
    """Independently recompute gold answers that are plain arithmetic."""
    meta, answer = entry["metadata"], entry["answer"]
    if name in ("basic_arithmetic", "chain_sum", "products"):
        expr = meta["expression"]
        assert "/" not in expr, expr
        return eval(expr, {"__builtins__": {}}) == int(answer)
    if name == "simple_equations":
        lhs, rhs = meta["equation"].split("=")
        def sub(side):
            return eval(side.replace(meta["variable"], f"({answer})"), {"__builtins__": {}})
        return sub(lhs) == sub(rhs)
    if name == "lcm":
        return math.lcm(*meta["numbers"]) == int(answer)
    if name == "number_sequence":
        return str(meta["sequence"][-1]) == answer
    return True  # other generators: trust reasoning-gym's own answer


def rg_items(level: int, seen: set[str]) -> tuple[list[dict], list[dict]]:
    from reasoning_gym import create_dataset

    seeds, evals = [], []
    for name, cfg, base_seed, n_seed, n_eval, tags, filt in RG_SPECS[level]:
        need = n_seed + n_eval
        ds = create_dataset(name, size=1000 * need, seed=base_seed, **cfg)
        picked = []
        for entry in ds:
            if not keep(filt, entry):
                continue
            if not check_answer(name, entry):
                raise AssertionError(f"{name}: wrong gold answer for {entry['question']!r}")
            prompt = entry["question"].strip()
            if name == "number_sequence":
                prompt = SEQUENCE_PREFIX + prompt
            # one prompt per distinct problem, however the generator phrased it
            meta = entry["metadata"]
            key = f"{name}:{meta['expression']}" if "expression" in meta else norm(prompt)
            if key in seen or norm(prompt) in seen:
                continue
            seen.update((key, norm(prompt)))
            picked.append(record(prompt, level, f"reasoning_gym/{name}", str(entry["answer"]), tags))
            if len(picked) == need:
                break
        if len(picked) != need:
            raise RuntimeError(f"{name}: only {len(picked)} of {need} items after filtering")
        seeds += picked[:n_seed]
        evals += picked[n_seed:]
    return seeds, evals


def handwritten_items(level: int, seen: set[str]) -> tuple[list[dict], list[dict]]:
    out = {"seed": [], "eval": []}
    for split in out:
        for prompt, expr in WORD_PROBLEMS[level][split]:
            out[split].append(record(prompt, level, "handwritten/word_problem",
                                     eval_expr(expr), ["math", "word_problem"]))
        for item in GENERAL[level][split]:
            prompt, tag, answer = (item + (None,))[:3]
            out[split].append(record(prompt, level, "handwritten/general", answer, [tag]))
    for rec in out["seed"] + out["eval"]:
        key = norm(rec["prompt"])
        if key in seen:
            raise AssertionError(f"duplicate prompt: {rec['prompt']!r}")
        seen.add(key)
    return out["seed"], out["eval"]


def near_duplicates(records: list[dict], threshold: float = 0.8) -> list[tuple[str, str]]:
    """Pairs of handwritten prompts whose texts are suspiciously similar."""
    texts = [norm(r["prompt"]) for r in records if r["source"].startswith("handwritten/")]
    pairs = []
    for i, a in enumerate(texts):
        for b in texts[i + 1:]:
            if SequenceMatcher(None, a, b).ratio() >= threshold:
                pairs.append((a, b))
    return pairs


def build() -> tuple[list[dict], list[dict]]:
    seen: set[str] = set()
    all_seeds, all_evals = [], []
    for level in (1, 2, 3):
        hs, he = handwritten_items(level, seen)
        rs, re_ = rg_items(level, seen)
        seeds, evals = hs + rs, he + re_
        if (len(seeds), len(evals)) != (N_SEED, N_EVAL):
            raise AssertionError(f"level {level}: {len(seeds)} seeds / {len(evals)} eval")
        rng = random.Random(SHUFFLE_SEED + level)
        rng.shuffle(seeds)
        rng.shuffle(evals)
        all_seeds += seeds
        all_evals += evals
    dups = near_duplicates(all_seeds + all_evals)
    if dups:
        raise AssertionError(f"near-duplicate handwritten prompts: {dups}")
    return all_seeds, all_evals


def dumps(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the files on disk differ from a fresh build")
    args = parser.parse_args()

    seeds, evals = build()
    files = {"seeds.jsonl": dumps(seeds), "eval.jsonl": dumps(evals)}
    if args.check:
        stale = [n for n, text in files.items()
                 if not (args.out_dir / n).exists()
                 or (args.out_dir / n).read_text(encoding="utf-8") != text]
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out_dir / name} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
