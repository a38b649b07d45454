import pytest
import torch

from helpers import tiny_args


def pytest_collection_modifyitems(items):
    """distributed and install tests are slow too; gpu tests are skipped without CUDA."""
    no_cuda = pytest.mark.skip(reason="needs CUDA (benchmarks/gpu_check.sh runs the gpu tests)")
    for item in items:
        if item.get_closest_marker("distributed") or item.get_closest_marker("install"):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_cuda)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 3-step tiny image run (a checkpoint and samples at step 3), trained once for the
    session: read it, or copy it into the test's folder to write into it."""
    from layersync.cli import train

    run = tmp_path_factory.mktemp("tiny") / "run"
    assert train.main(tiny_args(run, 3)) == 0
    return run
