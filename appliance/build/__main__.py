import sys
from appliance.build import main

sys.exit(main())
