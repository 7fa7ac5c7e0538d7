"""Suite-wide pytest hooks."""

FULL_SUITE = (
    "the full suite takes about 9 minutes on 2 CPU cores (CI allows 15); "
    "-m 'not slow' leaves out the end-to-end tests"
)


def pytest_collection_finish(session):
    # Also under -q (the README's command), where the report header is not shown.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and len(session.items) > 100:
        reporter.write_line(f"{len(session.items)} tests: {FULL_SUITE}")
