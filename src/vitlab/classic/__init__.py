"""Non-learned algorithms of the lectures: non-local means denoising and its image-quality metrics."""

from vitlab.classic.nlmeans import add_noise, nl_means, psnr, skimage_arguments, ssim

__all__ = ["add_noise", "nl_means", "psnr", "skimage_arguments", "ssim"]
