"""`nvlm-deploy build` without a subcommand: every stage of each target, above the stage packages.

It drives convert, build and serve (packaging), so it sits above them: `build` may not import
`serve`, which imports `build` (tests/test_imports.py). Target names and local GPU detection are
`nvlm_deploy.build.targets` / `nvlm_deploy.build.detect`.
"""
