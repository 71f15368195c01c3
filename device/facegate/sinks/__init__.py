"""The terminal's standard audiences, one module each: every sink is a callable taking an
`events.Event` (see events.py). The daemon lists them (daemon.Daemon.sinks); the screen
(facegate.screen) and the demo's narrator add theirs."""
