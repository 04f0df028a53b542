"""The prediction server's settings: the one place their defaults and bounds are written (the CLI's options
and the tests override them). Only pydantic is imported here."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmdistill.config.base import Section

ModelForm = Literal["int8", "fp32", "torch"]


class ServeSettings(Section):
    model: ModelForm = Field("int8", description="int8 (the run's onnx/model.int8.onnx), fp32 (onnx/model.onnx) or "
                             "torch (the saved PyTorch student)")
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    timeout_s: float = Field(10.0, gt=0, le=3600, description="a request's headers and body must arrive within "
                             "this many seconds of its first byte (else 408, or the connection is closed)")
    keep_alive_s: int = Field(5, ge=1, le=3600, description="an idle keep-alive connection is closed after this")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="a request line and headers still "
                                  "incomplete past this many bytes get 400")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_texts: int = Field(256, ge=1, description="texts per request (more: 400)")
    max_text_chars: int = Field(20_000, ge=1, description="characters per text (more: 400; the model reads "
                                "data.max_seq_len tokens of each)")
    batching: bool = Field(True, description="gather concurrent requests into one model call (micro-batching)")
    max_batch_texts: int = Field(64, ge=1, description="texts per model call when batching (one request with more "
                                 "is one call of its own)")
    batch_wait_ms: float = Field(0.0, ge=0, le=1000, description="how long a model call waits for more requests "
                                 "after the first (0: it takes the requests that queued while the model was busy)")
    threads: int = Field(1, ge=1, le=256, description="onnxruntime / torch threads per model call")
    backlog: int = Field(2048, ge=1, description="pending connections the kernel queues (listen backlog)")
