from mlharbor.cli import main

raise SystemExit(main())
