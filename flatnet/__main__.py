import sys

from flatnet.main import main

sys.exit(main())
