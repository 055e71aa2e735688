from adlearn.cli import main

raise SystemExit(main())
