import sys

from vplab.cli import main

sys.exit(main())
