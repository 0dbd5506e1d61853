"""The embedding pool on Ray sized to what a cluster has free, a stalled run's bound, and Ray's known noise kept
off the terminal. No Ray here: the rule is a function, and the run on a real cluster is in
integration_tests/test_ray.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qwen3_retrieval.cli import build_parser
from qwen3_retrieval.rag.errors import RagError
from qwen3_retrieval.rag.on_ray import READ_CPUS, RayOptions, size_pool


@pytest.mark.parametrize(
    ("free", "embedders", "share"),
    [
        (2, 1, 1.0), (2, 2, 0.75), (2, 3, 0.5), (2, 8, 0.18), (2, 15, 0.1),
        (4, 1, 1.0), (4, 3, 1.0), (4, 4, 0.87), (4, 8, 0.43),
        (8, 4, 1.0), (8, 7, 1.0), (8, 8, 0.93), (8, 16, 0.46),
    ],
)  # fmt: skip
def test_the_pool_fits_what_the_cluster_has_free(free: int, embedders: int, share: float) -> None:
    cpus, note = size_pool(free, 0, embedders, 0)
    assert cpus == share
    assert embedders * cpus + READ_CPUS <= free  # the reading tasks always find room
    if share == 1.0:
        assert note is None
    else:
        assert note == (
            f"the Ray cluster has {free} CPUs free, fewer than {embedders + READ_CPUS:g} for {embedders} embedding "
            f"actors and reading: each actor gets {share:g} of a CPU (fewer --ray-embedders give each more)"
        )


def test_a_pool_that_cannot_fit_is_one_error_naming_both_numbers() -> None:
    with pytest.raises(RagError) as raised:
        size_pool(2, 0, 16, 0)
    assert str(raised.value) == (
        "16 embedding actors and reading need at least 2.1 CPUs, but the Ray cluster has 2 free: use --ray-embedders 15"
    )
    with pytest.raises(RagError, match=r"has 0\.5 free: free some CPUs on the cluster or add a node$"):
        size_pool(0.5, 0, 1, 0)


def test_gpus_the_cluster_lacks_are_one_error_naming_both_numbers() -> None:
    with pytest.raises(RagError) as raised:
        size_pool(8, 0, 2, 1)
    assert str(raised.value) == (
        "2 embedding actors with 1 GPU each ask for 2 GPUs, but the Ray cluster has 0 free: use --ray-gpus 0 "
        "(embed on CPUs)"
    )
    with pytest.raises(RagError, match=r"ask for 4 GPUs, but the Ray cluster has 2 free: .* or --ray-embedders 2$"):
        size_pool(8, 2, 4, 1)
    assert size_pool(8, 1, 4, 0.25) == (1.0, None)  # fractions share a GPU


def test_the_stall_timeout_is_checked() -> None:
    assert RayOptions().stall_timeout == 120
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="stall_timeout"):
            RayOptions(stall_timeout=bad)
    args = build_parser().parse_args(["index", "docs", "--ray", "--ray-stall-timeout", "30"])
    assert args.ray_stall_timeout == 30


def test_a_stall_timeout_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["index", "docs", "--ray", "--ray-stall-timeout", "0"])
    assert raised.value.code == 2
    assert "must be a positive number of seconds, got 0" in capsys.readouterr().err


def test_known_noise_is_kept_off_the_terminal() -> None:
    script = """if True:
        import os, sys
        from qwen3_retrieval.cli import known_noise_off
        with known_noise_off():
            os.write(2, b"[E 1 1] core_worker.cc:2465: Actor ... has constructor arguments in the object store\\n")
            os.write(2, b'E0000 chttp2: Received a GOAWAY with error code ENHANCE_YOUR_CALM ... "too_many_pings"\\n')
            os.write(2, b"a line of another kind\\n")
            print("qwen3-rag: warning: ours", file=sys.stderr)
        print("qwen3-rag: error: after", file=sys.stderr)
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The C lines pass through a thread: their order against Python's own lines may change.
    assert sorted(done.stderr.splitlines()) == ["a line of another kind", "qwen3-rag: error: after",
                                                "qwen3-rag: warning: ours"]  # fmt: skip
