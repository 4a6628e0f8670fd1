"""Pipeline stages: each ``run(ctx) -> metrics`` reads earlier stages' artifacts and writes its own."""
