"""
Fixtures for sidekick's integration tests (see harness.py for the helpers).

* sidekick(ini, **ports) -> Sidekick: writes the INI into tmp_path, starts
  the binary with -c, waits for /ready; always killed at teardown. On a test
  failure the tail of its stderr is printed.
* upstream(handler=None, **kw) -> Upstream: a recording origin server,
  closed at teardown.
* ctlup(name, **kw) -> CtlUpstream: an upstream whose behaviour the test
  switches while it runs (ctlup.py), closed at teardown.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import SIDEKICK_BIN, Sidekick, Upstream  # noqa: E402

# What ASan, UBSan and LeakSanitizer print when they find something.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def sidekick_bin():
    if not os.path.exists(SIDEKICK_BIN):
        pytest.fail(f"sidekick binary not found: {SIDEKICK_BIN} (set SIDEKICK_BIN)")
    return SIDEKICK_BIN


@pytest.fixture
def sidekick(tmp_path, request, sidekick_bin):
    started = []

    def factory(ini: str, name: str = "sidekick.ini", wait_ready: bool = True, **ports):
        sk = Sidekick(tmp_path, ini, ports, name)
        started.append(sk)
        sk.start_with_retry(wait_ready=wait_ready)
        return sk

    yield factory
    failed = getattr(request.node, "rep_call", None)
    reports = []
    for sk in started:
        # A graceful stop first, so that LeakSanitizer runs at exit in
        # sanitizer builds; then make sure it is gone.
        if sk.proc is not None and sk.proc.poll() is None:
            try:
                sk.stop(timeout=5)
            except Exception:
                pass
        sk.kill()
        err = sk.stderr_text()
        for marker in SANITIZER_MARKERS:
            if marker in err:
                reports.append(f"{sk.config}: {marker}\n{err[-6000:]}")
                break
        if failed is not None and failed.failed:
            err = sk.stderr_text()
            print(f"\n--- sidekick {sk.config} exit={sk.proc.returncode if sk.proc else None} "
                  f"stderr (last 4000 chars) ---\n{err[-4000:]}")


    if reports:
        pytest.fail("sanitizer report in sidekick's stderr:\n" + "\n".join(reports), pytrace=False)


@pytest.fixture
def upstream():
    made = []

    def factory(handler=None, **kw) -> Upstream:
        u = Upstream(handler, **kw)
        made.append(u)
        return u

    yield factory
    for u in made:
        u.close()


@pytest.fixture
def ctlup():
    """ctlup(name, **kw) -> CtlUpstream (ctlup.py): an upstream switched on
    command (ok, status:N, slow:S, reset, stall, refuse; healthy/unhealthy
    health path), closed at teardown."""
    from ctlup import CtlUpstream
    made = []

    def factory(name: str = "up", **kw):
        u = CtlUpstream(name, **kw)
        made.append(u)
        return u

    yield factory
    for u in made:
        u.close()


@pytest.fixture
def ctlproc():
    """ctlproc(name, **kw) -> CtlProcess (ctlup.py): the same upstream in a
    process of its own, driven over its side channel; stopped at teardown."""
    from ctlup import CtlProcess
    made = []

    def factory(name: str = "up", **kw):
        u = CtlProcess(name, **kw)
        made.append(u)
        return u

    yield factory
    for u in made:
        u.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test (reload under load, many reloads); "
                                       "-m 'not slow' skips them")
