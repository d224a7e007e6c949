import sys

from xensim.cli import main

sys.exit(main())
