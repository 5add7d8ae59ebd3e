"""`python -m labjax ARGS` and the `labjax` command: the same as `python launch.py ARGS`."""

from labjax import host_memory


def main() -> None:
    """Restarts with huge pages where they help (before anything allocates: see launch.py), then runs the command."""
    host_memory.restart_with_huge_pages()
    from labjax import launcher

    launcher.run()


if __name__ == "__main__":
    main()
