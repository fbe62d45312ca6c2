"""Two processes (ranks of one torchrun job, or `sepen` and `sepen+ae`) never train one cached checkpoint at once."""

import threading
import time

from benchmark.methods import training_lock


def test_the_training_lock_lets_one_holder_in_at_a_time(tmp_path):
    events = []

    def hold(name):
        with training_lock(tmp_path / "key"):
            events.append((name, "in", time.monotonic()))
            time.sleep(0.3)
            events.append((name, "out", time.monotonic()))

    threads = [threading.Thread(target=hold, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [e[1] for e in events] == ["in", "out", "in", "out"]  # never two inside
    assert events[0][0] == events[1][0] and events[2][0] == events[3][0]
    assert (tmp_path / "key" / ".train.lock").is_file()
