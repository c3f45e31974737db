from osmos.cli import main

raise SystemExit(main())
