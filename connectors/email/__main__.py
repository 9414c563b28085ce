"""``python -m connectors.email check [-c config.yaml]`` (see ``connectors.email.check``)."""

import sys

from connectors.email.check import main

sys.exit(main())
