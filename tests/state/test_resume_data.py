"""The model's resume data in the step log (``k:<n>``): stored with the step in the append's one
script, read back with the window, kept for the newest ``resume_keep`` steps only, copied by a fork."""

from __future__ import annotations


async def play(store, sid, n, keep, start=0):
    for i in range(start, start + n):
        await store.append(
            "t",
            sid,
            expected_step=i,
            action={"keys": ["right"], "mouse": {}},
            latent=b"z%d" % (i + 1),
            frame=b"f%d" % (i + 1),
            resume=b"k%d" % (i + 1) if (i + 1) % 2 else None,  # a model may keep nothing at some steps
            resume_keep=keep,
        )


async def test_resume_data_rides_with_the_window_and_stays_bounded(store):
    rec = await store.create("t", model="m", prompt="p", seed=0, width=8, height=8, first_frame=b"f0")
    await play(store, rec.session_id, 20, keep=5)
    window = await store.window("t", rec.session_id, end_step=20, frames=5)
    assert [(e.step, e.latent, e.resume) for e in window] == [
        (16, b"z16", None),
        (17, b"z17", b"k17"),
        (18, b"z18", None),
        (19, b"z19", b"k19"),
        (20, b"z20", None),
    ]
    fields = await store.r.hkeys(store._log("t", rec.session_id))
    assert sorted(int(f[2:]) for f in fields if f.startswith(b"k:")) == [17, 19]  # older ones dropped

    child = await store.fork("t", rec.session_id)  # at the current step: the window's resume data comes along
    assert [e.resume for e in await store.window("t", child.session_id, end_step=20, frames=5)] == [
        None,
        b"k17",
        None,
        b"k19",
        None,
    ]
    await play(store, child.session_id, 6, keep=5, start=20)
    fields = await store.r.hkeys(store._log("t", child.session_id))
    assert sorted(int(f[2:]) for f in fields if f.startswith(b"k:")) == [23, 25]
