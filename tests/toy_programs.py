"""Small programs on the toy LM, used by the exact and statistical tests (see ppllm.testing.toys)."""

from ppllm.testing.toys import (  # noqa: F401
    CHUNK_LM,
    PARITY,
    PROGRAMS,
    TOKEN_LM,
    TOPIC_PRIOR,
    FewAs,
    LatentTopic,
    NoRepeat,
)
