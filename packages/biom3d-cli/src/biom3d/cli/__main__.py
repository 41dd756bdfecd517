import sys

from biom3d.cli.app import main

sys.exit(main())
