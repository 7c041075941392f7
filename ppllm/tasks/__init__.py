"""Task code that is not library: problems, verifiers and trained reward models of a task.

`ppllm` never imports a task at import time; recipes reach task code by name through the
registries (`[reward] name = "exact-arith"`), and scripts import it directly.
"""
