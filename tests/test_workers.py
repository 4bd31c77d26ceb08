"""cmswitch/solver/workers.py: the worker processes that solve the chosen segments'
MIPs — answers in call order, errors re-raised as raised, a broken pool falls back to
in-process, `$CMSWITCH_JOBS` checked, and a compile on workers never imports Pyomo
itself.  (That the plan does not depend on the workers: tests/test_determinism.py.)"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmswitch.errors import CMSwitchError
from cmswitch.solver import workers


def _pid_and(x: int) -> tuple[int, int]:
    return os.getpid(), x


def _fresh_process(code: str) -> list[str]:
    """Run `code` in a new interpreter (a process with no workers and one thread)
    with this module's helpers imported; returns its printed words."""
    script = f"import os, threading; from cmswitch.solver import workers; {code}"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=Path(__file__).parent,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_in_process_when_one_job():
    assert workers.run_all(_pid_and, [(1,), (2,)], jobs=1) == [(os.getpid(), 1),
                                                               (os.getpid(), 2)]


def test_one_call_goes_to_the_workers_only_once_they_run():
    alone, started, pid = _fresh_process(
        "one = workers.run_all(os.getpid, [()], jobs=2); workers.prestart(2); "
        "two = workers.run_all(os.getpid, [()], jobs=2); print(one[0], two[0], os.getpid())")
    assert alone == pid and started != pid


def test_no_workers_are_forked_beside_other_threads():
    mine, pid = _fresh_process(
        "stop = threading.Event(); threading.Thread(target=stop.wait).start(); "
        "got = workers.run_all(os.getpid, [(), ()], jobs=2); stop.set(); "
        "print(got[0] if got[0] == got[1] else -1, os.getpid())")
    assert mine == pid


HELPERS = ("from test_workers import _fail, _die_in_a_worker, _pid_and; "
           "import operator; ")


def _fail(x: int) -> int:
    raise CMSwitchError(f"segment s{x}: no feasible allocation")


def _die_in_a_worker(x: int) -> int:
    if multiprocessing.parent_process() is not None:
        os._exit(3)  # a worker killed mid-solve
    return 10 * x


def test_answers_come_back_in_call_order_from_other_processes():
    words = _fresh_process(HELPERS + (
        "calls = [(a, 13 - a) for a in range(12)]; "
        "print(*workers.run_all(operator.mul, calls, jobs=2)); "
        "pids = {p for p, _ in workers.run_all(_pid_and, [(i,) for i in range(8)], jobs=2)}; "
        "print(int(os.getpid() in pids))"))
    assert [int(w) for w in words] == [a * (13 - a) for a in range(12)] + [0]


def test_a_workers_error_is_raised_with_its_message():
    words = _fresh_process(HELPERS + (
        "from cmswitch.errors import CMSwitchError\n"
        "try:\n    workers.run_all(_fail, [(1,), (2,)], jobs=2)\n"
        "except CMSwitchError as e:\n    print(e)"))
    assert " ".join(words) == "segment s1: no feasible allocation"


def test_a_broken_pool_falls_back_to_in_process_then_starts_anew():
    words = _fresh_process(HELPERS + (
        "print(*workers.run_all(_die_in_a_worker, [(1,), (2,), (3,)], jobs=2)); "
        "got = workers.run_all(_pid_and, [(1,), (2,)], jobs=2); "
        "print(int(all(p != os.getpid() for p, _ in got)))"))
    assert words == ["10", "20", "30", "1"]


@pytest.mark.parametrize("value, jobs", [("", None), ("3", 3), (" 2 ", 2)])
def test_jobs_from_the_environment(monkeypatch, value, jobs):
    monkeypatch.setenv(workers.JOBS_ENV, value)
    assert workers.resolve_jobs(0) == (jobs or workers.local_cores())
    assert workers.resolve_jobs(5) == 5


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "\u0663"])
def test_bad_jobs_in_the_environment_is_one_error(monkeypatch, value):
    monkeypatch.setenv(workers.JOBS_ENV, value)
    with pytest.raises(CMSwitchError, match="CMSWITCH_JOBS=.*positive integer"):
        workers.resolve_jobs(0)


def test_a_compile_on_workers_leaves_pyomo_to_them(tmp_path):
    """With two workers the compiling process prices (in-process placement search)
    and lays out, but every Pyomo model is built in a worker."""
    from conftest import MODELS

    script = ("import sys; from cmswitch.api import compile; "
              f"p = compile({str(MODELS / 'resnet18.onnx')!r}, jobs=2); "
              "print(p.report()['mip']['segment_mips'], 'pyomo.environ' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    mips, imported = r.stdout.split()
    assert int(mips) > 1 and imported == "False"
