import sys

from cryptopipe.cli import main

sys.exit(main())
