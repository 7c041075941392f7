"""Small programs on the toy LM, used by the exact and statistical tests (see ppllm.toys)."""

from ppllm.toys import (  # noqa: F401
    CHUNK_LM,
    PARITY,
    PROGRAMS,
    TOKEN_LM,
    TOPIC_PRIOR,
    FewAs,
    LatentTopic,
    NoRepeat,
    ToyText,
)
