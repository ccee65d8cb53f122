import sys

from bnn_export.cli import main

sys.exit(main())
