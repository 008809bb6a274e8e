"""Bootstrap of every child process: `python -m common.child SIGNAL MODULE ARGS...`.

Arms the parent-death signal and takes its pool's CPU policy (common/cpu_policy.py) before anything heavy is imported (a worker imports torch or mediapipe
for seconds; a parent killed during that window would otherwise leave an orphan), checks that the
parent did not already die, keeps a watcher thread as a second line of defence (the kernel ties the
parent-death signal to the parent *thread* that forked us), then runs MODULE as __main__.
"""
import os
import runpy
import sys
import time


def _orphaned(sig: int) -> None:
    os.kill(os.getpid(), sig)   # the same signal the kernel would have sent
    time.sleep(5.0)
    os._exit(1)                  # a handler that did not exit in time


def main() -> None:
    from common.cpu_policy import apply_from_env
    from common.proc import set_pdeathsig, watch_parent
    sig, module = int(sys.argv[1]), sys.argv[2]
    set_pdeathsig(sig)
    apply_from_env()   # the CPU policy of its pool: cores and priority, before any heavy import
    expected = int(os.environ.get("PML_PARENT_PID") or os.getppid())
    if os.getppid() != expected:
        os._exit(1)  # the parent died before the signal was armed
    watch_parent(lambda: _orphaned(sig))
    sys.argv = [module, *sys.argv[3:]]
    _profile_if_asked(module)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _profile_if_asked(module: str) -> None:
    """Developers: PML_PROFILE_DIR=/tmp/p PML_PROFILE_MODULES=facade.server,workers.fake_worker writes a
    cProfile of the main thread of those children to /tmp/p/<module>-<pid>.prof when they exit normally."""
    folder = os.environ.get("PML_PROFILE_DIR")
    if not folder or module not in os.environ.get("PML_PROFILE_MODULES", "").split(","):
        return
    import atexit
    import cProfile
    profile = cProfile.Profile()

    def dump() -> None:
        profile.disable()
        profile.dump_stats(os.path.join(folder, f"{module}-{os.getpid()}.prof"))
    atexit.register(dump)
    profile.enable()


if __name__ == "__main__":
    main()
