import sys

from llmpy.cli import main

sys.exit(main())
