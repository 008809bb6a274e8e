"""Bootstrap of every child process: `python -m common.child PDEATHSIG MODULE ARGS...`.

Arms the parent-death signal before anything heavy is imported (a worker imports torch or mediapipe
for seconds; a parent killed during that window would otherwise leave an orphan), checks that the
parent did not already die, then runs MODULE as __main__.
"""
import os
import runpy
import sys


def main() -> None:
    from common.proc import set_pdeathsig
    sig, module = int(sys.argv[1]), sys.argv[2]
    set_pdeathsig(sig)
    expected = os.environ.get("PML_PARENT_PID")
    if expected and os.getppid() != int(expected):
        os._exit(1)  # the parent died before the signal was armed
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
