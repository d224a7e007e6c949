import sys

from ncd.sim.cli import main

sys.exit(main())
