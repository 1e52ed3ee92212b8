"""What every method's training shares: the train state on the mesh, losses, optimizers, the run context and
the one epoch loop (`runner`) that drives original/gold training and every unlearning method."""
