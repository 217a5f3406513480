"""`python -m grokwatch` is the `grokwatch` command."""

from grokwatch.cli import main

if __name__ == "__main__":
    main()
