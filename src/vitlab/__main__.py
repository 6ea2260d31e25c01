import sys

from vitlab.cli.main import main

sys.exit(main())
