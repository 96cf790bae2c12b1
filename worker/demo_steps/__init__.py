"""One module per `cachework demo` step, each with a `run(ctx: DemoContext)`."""
