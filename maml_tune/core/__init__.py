"""The MAML engine. Depends on torch only: never on optuna, typer or rich."""
