from booking.ops.cli import main

raise SystemExit(main())
