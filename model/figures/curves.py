"""Training curves: loss and accuracy per epoch, train and test."""
from model.figures.plotting import Figure


def plot_training_curve(history, title):
    """Loss and accuracy per epoch, train and test, as a two-panel figure."""
    epochs = [row["epoch"] for row in history]
    last = history[-1]
    sampled = {row.get("test_images") for row in history[:-1]} - {last.get("test_images")}
    test_label = (f"test ({min(sampled):,} images before the last epoch)" if sampled
                  else "test")
    accuracy_title = f"accuracy (test: {100 * last['test_accuracy']:.2f}%"
    if "tta_accuracy" in last:
        accuracy_title += f"; {100 * last['tta_accuracy']:.2f}% with test-time views"
    figure = Figure(figsize=(9, 3.4))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    loss_axis.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    loss_axis.plot(epochs, [row["test_loss"] for row in history], "s-", label=test_label)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    accuracy_axis.plot(epochs, [100 * row["train_accuracy"] for row in history], "o-",
                       label="train")
    accuracy_axis.plot(epochs, [100 * row["test_accuracy"] for row in history], "s-",
                       label=test_label)
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy (%)", title=accuracy_title + ")")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        axis.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
