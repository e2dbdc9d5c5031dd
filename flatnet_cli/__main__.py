import sys

from flatnet_cli.main import main

sys.exit(main())
