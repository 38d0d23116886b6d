from nvlm_deploy.cli import main

raise SystemExit(main())
