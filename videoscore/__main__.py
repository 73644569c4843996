"""`python -m videoscore …` is the `videoscore` command."""

from videoscore.cli import main

main()
