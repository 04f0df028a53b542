"""`llmdistill` under accelerate's FSDP2 on CPU processes (gloo), for tests/integration/test_distributed.py.

accelerate turns FSDP on only for accelerator devices: on CPU processes it sets MULTI_CPU and wraps the
model in DDP, whatever the launch config says. torch's FSDP2 (`fully_shard`) itself runs on gloo, so this
launcher lifts that one gate: where the launch asked for FSDP (ACCELERATE_USE_FSDP) and the processes are
CPU ones, the state becomes FSDP with the plugin accelerate built. Everything after it (accelerate's
fsdp2_prepare_model, Trainer's FSDP paths, our loss, saving the gathered student) is the code a GPU run
uses. Run as: accelerate launch --config_file configs/accelerate/fsdp2.yaml tests/fsdp_on_cpu.py train ...
"""

import os

from accelerate.state import AcceleratorState, DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or fsdp_plugin is not None
    if wanted and self.distributed_type == DistributedType.MULTI_CPU:
        if fsdp_plugin is None:
            from accelerate.utils import FullyShardedDataParallelPlugin

            fsdp_plugin = FullyShardedDataParallelPlugin()
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    from llmdistill.cli import main

    main()
