import sys

from tissuestack.cli import main

sys.exit(main())
