"""rlhf/stop.py: a signal becomes a stop request while a loop listens, an immediate exit otherwise."""

import os
import signal

import pytest

from rlhf import stop


def test_sigterm_without_a_listening_loop_exits_at_once_with_128_plus_signal():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        with stop.cli_handlers():
            os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_while_a_loop_listens_is_a_request_not_an_exit(sig):
    with stop.cli_handlers():
        with stop.listening():
            assert stop.requested() is None
            os.kill(os.getpid(), sig)
            assert stop.requested() == f"{sig.name} received"
            err = stop.StopRequested(stop.requested(), "ppo", 7, "/x/step_000007")
            assert err.exit_code == 128 + sig and "step 7" in str(err)
        assert stop.requested() is None  # cleared when the loop stops listening
    assert stop.request_stop("nobody listens") is False
