"""Crash safety (issue 9): a short kill campaign (tests/lab/killcampaign.py) on the session's lab.

acmebot is SIGKILLed while it renews, rolls keys over or reissues a deleted certificate: at
random instants, and on entering a rename or a link (strace's syscall injection), with the
kill points spread over every rename and link of every kind of run from an offset the seed
decides (the seed is printed, so a failure can be replayed with `killcampaign.py --seed`).  After each kill, no
certificate may be on disk without its private key; one plain run must then exit 0 and leave
every file consistent, with no temp file or journal left, and a second run must change nothing.
The full campaign (every rename and link, 200 random kills) is `sudo python3 tests/lab/killcampaign.py`.
"""

import random
import shutil

from lab.killcampaign import Campaign, run_campaign

RANDOM_KILLS = 6
SYSCALL_KILLS = 14


def test_kill_campaign(lab, tmp_path):
    assert shutil.which("strace"), "strace is required (Debian package strace: sudo tests/install-deps)"
    seed = random.randrange(1 << 32)
    lines = []
    campaign = Campaign(lab, tmp_path, prefix="kct", seed=seed, log=lines.append)
    run_campaign(campaign, RANDOM_KILLS, SYSCALL_KILLS)
    figures = campaign.figures()
    print(figures)
    report = figures + "\n" + "\n".join(lines)
    assert len(campaign.kills) == RANDOM_KILLS + SYSCALL_KILLS, report
    # a rename or link that the counting run made is reached by the same kind of run
    assert all(kill.killed for kill in campaign.kills if kill.how != "random"), report
    assert [kill.label for kill in campaign.kills if kill.problems] == [], report
