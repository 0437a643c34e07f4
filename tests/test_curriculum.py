"""The curriculum queue: shrinking, variants, hints, levels, events and exact resumption."""

import json

import pytest

from engine.config import ConfigError, CurriculumConfig, TaskConfig
from engine.curriculum import CurriculumQueue, ProgrammaticProvider
from engine.tasks.tokenizer import BLANK, HINT, SEP, stable_int


@pytest.fixture(scope="module")
def provider():
    return ProgrammaticProvider("arithmetic", levels=3, seed=0)


def queue(provider, **kw):
    settings = dict(questions=20, levels=3, mastery=2, threshold=0.0, max_epochs=1000, hint_from=0.0)
    settings.update(kw)
    return CurriculumQueue(provider, **settings)


def serve_until(q, index, limit=1000):
    """Serve one item at a time until question `index` comes up; return it."""
    for _ in range(limit):
        (item,) = q.next_batch(1)
        if item.index == index:
            return item
        q.report([item.id], [False])  # others stay put
    raise AssertionError(f"question {index} never came up")


# ----------------------------------------------------------------------------- shrinking


def test_correct_answers_shrink_the_queue_wrong_ones_do_not(provider):
    q = queue(provider)
    for _ in range(3):  # three passes, all wrong
        batch = q.next_batch(20)
        q.report([i.id for i in batch], [False] * len(batch))
    assert q.remaining == 20 and q.level == 1

    q = queue(provider, mastery=2)
    first = q.next_batch(20)
    assert sorted(i.index for i in first) == list(range(20))  # one pass serves every question once
    q.report([i.id for i in first], [True] * 20)
    assert q.remaining == 20  # one success each: not yet mastered
    second = q.next_batch(12)
    q.report([i.id for i in second], [True] * 12)
    assert q.remaining == 8 and q.level == 1


def test_success_replaces_the_question_with_a_variant(provider):
    q = queue(provider, questions=3)
    item = serve_until(q, 1)
    q.report([item.id], [True])
    again = serve_until(q, 1)
    assert again.id != item.id and again.variant == 1 and again.streak == 1 and again.hint == 0
    assert again.problem.template == item.problem.template and again.problem.prompt != item.problem.prompt
    assert again.problem == provider.question(1, 1, 1)


def test_failure_keeps_the_question_and_a_second_one_in_a_row_adds_a_hint(provider):
    q = queue(provider, questions=3)
    item = serve_until(q, 2)
    assert item.hint == 0 and HINT not in item.sample.inputs
    q.report([item.id], [False])
    retry = serve_until(q, 2)  # one miss: the same question, to practise without help
    assert retry.problem == item.problem and retry.hint == 0 and retry.sample == item.sample
    assert any(item.id in e.get("retried", ()) for e in q.drain_events())
    q.report([retry.id], [False])
    hinted = serve_until(q, 2)
    assert hinted.problem == item.problem and hinted.hint == 1 and hinted.variant == 0
    assert hinted.sample != item.sample and hinted.sample == provider.encode(item.problem, 1)
    sep = hinted.sample.inputs.index(SEP)
    revealed = [t for t in hinted.sample.inputs[sep + 1:] if t > BLANK]
    assert HINT in hinted.sample.inputs or revealed  # a worked step or part of the answer is in the input
    top = provider.max_hint(item.problem)
    for _ in range(top + 2):  # hints grow with failures, up to the provider's last hint
        q.report([hinted.id], [False])
        hinted = serve_until(q, 2)
    assert hinted.hint == top


def test_a_success_resets_the_misses_and_hint_after_1_hints_at_once(provider):
    q = queue(provider, questions=3, mastery=5)
    outcomes = [False, True, False, True, False, False]  # misses in a row: 1, 0, 1, 0, 1, 2
    fates = []
    for ok in outcomes:
        item = serve_until(q, 2)
        q.drain_events()
        q.report([item.id], [ok])
        (event,) = q.drain_events()
        fates.append(next(k for k in ("retried", "hinted", "variants") if item.id in event[k]))
    assert fates == ["retried", "variants", "retried", "variants", "retried", "hinted"]

    eager = queue(provider, questions=3, hint_after=1)
    item = serve_until(eager, 2)
    eager.report([item.id], [False])
    assert serve_until(eager, 2).hint == 1


def test_no_hints_until_the_model_has_mastered_half_the_level(provider):
    q = CurriculumQueue(provider, questions=40, levels=1, mastery=1, threshold=0.0, max_epochs=1000)
    assert (q.hint_after, q.hint_from) == (2, 0.5)  # the defaults
    for _ in range(10):  # everything wrong: an untrained model, to be trained, not hinted
        batch = q.next_batch(8)
        q.report([i.id for i in batch], [False] * 8)
    assert q.summary()["by_hint"] == {"0": 40} and q.mastered_share() == 0.0

    def next_zero():  # the others are answered right on the way, and leave (mastery = 1)
        while (item := q.next_batch(1)[0]).index != 0:
            q.report([item.id], [True])
        return item

    item = next_zero()
    assert item.hint == 0 and q.mastered_share() >= 0.5
    q.report([item.id], [False])  # question 0 keeps failing while most of the level is learned
    assert next_zero().hint == 1


def test_hinted_success_fades_the_hint_and_does_not_count_toward_mastery(provider):
    q = queue(provider, questions=3, mastery=1)
    for _ in range(2):  # two misses in a row earn the first hint
        item = serve_until(q, 0)
        q.report([item.id], [False])
    hinted = serve_until(q, 0)
    assert hinted.hint == 1
    q.report([hinted.id], [True])  # right, but with help
    assert q.remaining == 3
    after = serve_until(q, 0)
    assert after.hint == 0 and after.variant == 1 and after.streak == 0
    q.report([after.id], [True])  # right alone: mastered (mastery = 1)
    assert q.remaining == 2


def test_mastery_needs_k_unhinted_successes_in_a_row(provider):
    q = queue(provider, questions=2, mastery=3, levels=1)
    # a failure resets the streak; two in a row earn a hint, and a hinted success does not count
    outcomes = [True, True, False, False, True, True, True]
    streaks, hints = [], []
    for ok in outcomes:
        item = serve_until(q, 0)
        streaks.append(item.streak)
        hints.append(item.hint)
        q.report([item.id], [ok])
    assert streaks == [0, 1, 2, 0, 0, 0, 1] and hints == [0, 0, 0, 0, 1, 0, 0]
    assert q.remaining == 2
    item = serve_until(q, 0)
    q.report([item.id], [True])
    assert q.remaining == 1
    assert all(i.index == 1 for i in q.next_batch(5))  # only the other question is left


def test_stale_and_duplicate_ids_change_nothing(provider):
    q = queue(provider, questions=2, mastery=5)
    batch = q.next_batch(4)  # a queue smaller than the batch is served twice over
    assert sorted(i.index for i in batch[:2]) == sorted(i.index for i in batch[2:]) == [0, 1]
    q.drain_events()
    q.report([batch[0].id, batch[0].id, 12345], [True, True, False])
    (event,) = q.drain_events()
    assert event["kind"] == "report" and event["stale"] == 2 and len(event["variants"]) == 1


# ----------------------------------------------------------------------------- levels


def test_level_advances_exactly_at_the_threshold(provider):
    q = queue(provider, questions=40, mastery=1, threshold=0.25)
    q.drain_events()
    for expected_remaining in range(39, 9, -1):
        (item,) = q.next_batch(1)
        q.report([item.id], [True])
        assert q.level == 1 and q.remaining == expected_remaining
    (item,) = q.next_batch(1)
    q.report([item.id], [True])  # 9 left: fewer than 25% of 40
    assert q.level == 2 and q.remaining == 40
    ends = [e for e in q.drain_events() if e["kind"] == "level_end"]
    assert ends == [{"kind": "level_end", "level": 1, "epoch": 0, "size": 40, "remaining": 9,
                     "reason": "threshold", "epochs": 0}]
    assert all(i.level == 2 and i.index >= 40 for i in q.next_batch(40))  # new questions


def test_epoch_limit_ends_the_level(provider):
    q = queue(provider, questions=5, max_epochs=3)
    for _ in range(3):
        batch = q.next_batch(5)
        q.report([i.id for i in batch], [False] * 5)
        assert q.level == 1
    q.next_batch(1)  # the fourth pass would start: the level is over
    assert q.level == 2
    ends = [e for e in q.drain_events() if e["kind"] == "level_end"]
    assert ends[0]["reason"] == "epochs" and ends[0]["remaining"] == 5 and ends[0]["epochs"] == 3


def test_queue_is_done_after_the_last_level(provider):
    q = queue(provider, questions=4, levels=2, mastery=1)
    for _ in range(2):
        batch = q.next_batch(4)
        q.report([i.id for i in batch], [True] * 4)
    assert q.done and q.next_batch(8) == []
    kinds = [e["kind"] for e in q.drain_events()]
    assert kinds.count("level_start") == 2 and kinds.count("level_end") == 2 and kinds[-1] == "done"


def test_provider_levels_get_harder():
    p = ProgrammaticProvider("arithmetic", levels=10, seed=0)
    means = [sum(p.difficulty(level, i) for i in range(400)) / 400 for level in range(1, 11)]
    assert means[0] == 1.0 and means[-1] == 3.0
    assert all(a < b for a, b in zip(means, means[1:]))
    assert p.question(10, 5, 0).template.split("/")[1] in ("add_then_mul", "mul_then_add", "mul_then_sub")


def test_bad_settings_are_one_sentence(provider):
    with pytest.raises(ConfigError, match="start_level"):
        CurriculumQueue(provider, levels=3, start_level=4)
    with pytest.raises(ConfigError, match="cannot feed the curriculum"):
        ProgrammaticProvider("sudoku")


def test_provider_from_config_passes_the_task_settings():
    p = ProgrammaticProvider.from_config(TaskConfig(name="algebra", seed=4, steps=True), CurriculumConfig(levels=5))
    assert p.levels == 5 and p.seed == 4 and all(t.steps and t.seed == 4 for t in p.tasks.values())
    assert [t.difficulty for t in p.tasks.values()] == [1, 2, 3]


def test_from_config(provider):
    cfg = CurriculumConfig(enabled=True, questions=7, levels=3, mastery=4, threshold=0.5, max_epochs=2, start_level=2)
    q = CurriculumQueue.from_config(cfg, provider, seed=3)
    assert (q.level, q.size, q.mastery, q.threshold, q.max_epochs) == (2, 7, 4, 0.5, 2)
    assert q.summary() == {"level": 2, "levels": 3, "epoch": 0, "size": 7, "remaining": 7, "done": False,
                           "by_streak": [7, 0, 0, 0], "by_hint": {"0": 7}}


# ----------------------------------------------------------------------------- state and events


def learner(item) -> bool:
    """A deterministic stand-in for a model: right on about 70% of questions, more with hints."""
    return stable_int(item.problem.prompt, item.hint) % 10 < 7 + item.hint


def drive(q, steps, n=8):
    trace = []
    for _ in range(steps):
        batch = q.next_batch(n)
        q.report([i.id for i in batch], [learner(i) for i in batch])
        trace.append(([(i.id, i.index, i.variant, i.hint, i.sample.inputs) for i in batch], q.drain_events()))
    return trace


def test_state_round_trips_and_a_resumed_queue_continues_exactly(provider):
    settings = dict(questions=30, levels=3, mastery=2, threshold=0.1, max_epochs=6)
    straight = queue(provider, **settings)
    drive(straight, 15)
    saved = json.loads(json.dumps(straight.state_dict()))  # plain JSON-able data
    assert saved == straight.state_dict()

    resumed = queue(provider, questions=5, levels=9, mastery=7, seed=99)  # settings come from the state
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved
    rest = drive(straight, 40)
    assert drive(resumed, 40) == rest
    assert straight.state_dict() == resumed.state_dict()
    assert any(e["kind"] == "level_end" for _, events in rest for e in events)  # the run crossed a level


def test_report_events_tell_the_console_what_changed(provider):
    q = queue(provider, questions=6, mastery=1)
    (start,) = q.drain_events()
    assert start == {"kind": "level_start", "level": 1, "epoch": 0, "size": 6, "remaining": 6}
    batch = q.next_batch(3)
    q.report([i.id for i in batch], [True, False, True])
    (event,) = q.drain_events()
    assert event["kind"] == "report" and event["remaining"] == 4 and event["correct"] == 2 and event["total"] == 3
    assert event["mastered"] == [batch[0].id, batch[2].id] and event["retried"] == [batch[1].id]
    assert event["hinted"] == []
    assert q.drain_events() == []


def test_a_version_1_state_loads_and_keeps_hinting_at_the_first_miss(provider):
    q = queue(provider, questions=4, mastery=2)
    drive(q, 3, n=2)
    state = q.state_dict()
    old = {**state, "version": 1, "settings": {k: v for k, v in state["settings"].items() if k != "hint_after"},
           "entries": [None if e is None else e[:6] for e in state["entries"]]}
    resumed = queue(provider, questions=4)
    resumed.load_state_dict(old)
    assert resumed.hint_after == 1
    assert resumed.state_dict()["entries"] == [None if e is None else e[:6] + [0] for e in state["entries"]]
    item = serve_until(resumed, 0)
    assert item.hint == 0 < provider.max_hint(item.problem)
    resumed.report([item.id], [False])  # the old rule: the first miss earns a hint
    assert serve_until(resumed, 0).hint == 1


# ----------------------------------------------------------------------------- spaced review


def master(q, index, times):
    """Answer question `index` right `times` times in a row (the rest wrong); the grade of its last answer."""
    for _ in range(times):
        item = serve_until(q, index)
        q.report([item.id], [True])
    return item


def test_a_mastered_question_comes_back_for_review_and_its_gap_doubles_when_it_passes(provider):
    q = queue(provider, questions=4, mastery=1, review_gap=10)
    item = master(q, 2, 1)
    assert q.remaining == 3 and q.due_reviews(5) == []  # not due yet
    q.next_batch(10)  # ten more questions served: due now
    (review,) = q.due_reviews(5)
    assert (review.level, review.index, review.variant, review.hint) == (1, 2, item.variant, 0)
    assert review.problem == item.problem
    q.report([review.id], [True])
    q.next_batch(10)
    assert q.due_reviews(5) == []  # passed: the next gap is 20
    q.next_batch(10)
    assert len(q.due_reviews(5)) == 1


def test_a_failed_review_of_this_level_puts_the_question_back_in_the_queue(provider):
    q = queue(provider, questions=4, mastery=1, review_gap=1)
    item = master(q, 2, 1)
    q.next_batch(1)
    (review,) = q.due_reviews(1)
    q.report([review.id], [False])
    assert q.remaining == 4 and q.drain_events()[-1]["forgotten"] == 1
    back = serve_until(q, 2)
    assert back.problem == item.problem and back.streak == 0


def test_with_review_unmastered_a_levels_unsolved_questions_come_back_after_it_ends(provider):
    for unmastered in (False, True):
        q = queue(provider, questions=4, mastery=1, review_gap=3, review_unmastered=unmastered)
        master(q, 2, 1)
        q.end_level("held_out")
        assert q.level == 2
        q.next_batch(3)  # one gap served at level 2
        due = q.due_reviews(10)
        # mastered question 2 always; the three never solved only with review_unmastered
        assert sorted(r.index for r in due) == ([0, 1, 2, 3] if unmastered else [2])
        assert all(r.level == 1 and r.hint == 0 for r in due)
        q.report([r.id for r in due], [False] * len(due))  # failed reviews of an earlier level: due again a gap on
        q.next_batch(3)
        assert len(q.due_reviews(10)) == len(due)
    state = json.loads(json.dumps(q.state_dict()))
    again = queue(provider, questions=4, mastery=1, review_gap=3)
    again.load_state_dict(state)
    assert again.review_unmastered and again.state_dict() == q.state_dict()


def test_reviews_take_their_share_of_the_slots_and_resume_exactly(provider):
    from engine.curriculum import CurriculumFeed
    q = queue(provider, questions=40, mastery=1, review_gap=1)
    feed = CurriculumFeed(q, provider, batch_size=8, review_share=0.5)
    first = feed.fill([True] * 8)
    feed.grade([True] * 8, [list(s.labels) for s in first.values()])  # the labels: every answer right
    assert q.remaining == 32
    second = feed.fill([True] * 8)
    assert not any(item.id in q.reviewing for item in feed.slots)  # due one question after mastery: not yet
    feed.grade([True] * 8, [[0] * len(s.labels) for s in second.values()])
    second = feed.fill([True] * 8)
    assert sum(item.id in q.reviewing for item in feed.slots) == 4
    state = json.loads(json.dumps(feed.state_dict()))
    again = CurriculumFeed(queue(provider, questions=40, mastery=1, review_gap=1), provider, 8, review_share=0.5)
    again.load_state_dict(state)
    wrong = [[0] * len(s.labels) for s in second.values()]
    feed.grade([True] * 8, wrong)
    again.grade([True] * 8, wrong)
    assert feed.state_dict() == again.state_dict() and q.remaining == 36  # four forgotten, back in the queue
    assert [s.inputs for s in feed.fill([True] * 8).values()] == [s.inputs for s in again.fill([True] * 8).values()]
