"""Running training: the loop, evaluation, checkpoints, run folders, several processes, TensorBoard,
synthetic timing and the doctor."""
