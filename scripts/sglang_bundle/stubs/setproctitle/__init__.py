"""Import stub for `setproctitle`, used only where the GPU host has none.

SGLang's scheduler (sglang.srt.managers.scheduler, imported by its speculative workers, which the
attention test kit's runner modes use) imports it at module level to name its processes; nothing
on the attention path calls it. Calling anything raises.
"""

from _sglang_bundle_stub import make_stub_package

make_stub_package(__name__, "setproctitle")
