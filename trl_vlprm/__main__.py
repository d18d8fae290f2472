"""`python -m trl_vlprm <command>`: see `trl_vlprm.cli`."""

from trl_vlprm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
