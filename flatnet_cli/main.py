def main() -> int:
    raise SystemExit("flatnet CLI: not built yet")
