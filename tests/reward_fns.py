"""Python reward functions for tests/test_rewards.py, named as ``py:reward_fns:<function>``
(tests/ is on sys.path under pytest)."""


def kind_words(prompts, responses):
    """+1 per 'friend' or 'kind', -1 per 'idiot', in the response: a deterministic reward."""
    return [float(sum((w in ("friend", "kind")) - (w == "idiot") for w in r.split())) for r in responses]


def too_few(prompts, responses):
    return [0.0] * (len(responses) - 1)


def not_numbers(prompts, responses):
    return ["good"] * len(responses)


def with_nan(prompts, responses):
    return [float("nan")] * len(responses)


def a_number(prompts, responses):
    return 1.0


NOT_CALLABLE = 3
