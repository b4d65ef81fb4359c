"""main.py for tests/test_distributed.py to start under torchrun, with a fault to inject.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/torchrun_main.py <main.py flags>

T2I_TEST_FAULT="RANK:N:KIND" makes process RANK fail as its N-th training iteration begins (counted over the whole
run, from 1): KIND `error` raises a T2IError, `crash` ends the process at once as a kill would.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import main  # noqa: E402
from t2i.errors import T2IError  # noqa: E402
from t2i.training.nonfinite import StepGuard  # noqa: E402


def inject(rank: int, iteration: int, kind: str) -> None:
    save = StepGuard.save
    calls = {"n": 0}

    def failing_save(self: StepGuard) -> None:
        calls["n"] += 1
        if int(os.environ["RANK"]) == rank and calls["n"] == iteration:
            if kind == "crash":
                os._exit(9)
            raise T2IError("an injected failure")
        save(self)

    StepGuard.save = failing_save


if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes on a small shared machine
    if os.environ.get("T2I_TEST_FAULT"):
        fault_rank, fault_iteration, fault_kind = os.environ["T2I_TEST_FAULT"].split(":")
        inject(int(fault_rank), int(fault_iteration), fault_kind)
    main.main(sys.argv[1:])
