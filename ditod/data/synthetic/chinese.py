"""Chinese text of a page: sentences from common words; references are partly in Latin script."""

from .english import latin_reference
from .writer import DATASETS, Writer, words

NOUNS = words(
    "模型 方法 网络 文档 版面 页面 区域 特征 表示 数据集 基准 检测器 编码器 解码器 标注 实验 结果 "
    "准确率 性能 框架 模块 注意力 文本 图像 表格 标题 结构 任务 样本 标签 损失 参数 算法 系统 信息"
)
VERBS = words("提出 设计 采用 利用 提高 改进 融合 学习 检测 识别 分析 验证 评估 预测 提取 构建")
ADJECTIVES = words("多模态 视觉 鲁棒 高效 准确 新型 简单 有效 大规模 语义 空间 层次化 预训练 端到端 轻量级")
CONNECTIVES = words("从而 并且 进而 同时")
TEMPLATES = (
    "本文{verb}了一种{adj}的{noun}{noun}方法，{conn}{verb}{noun}的{noun}。",
    "实验结果表明，该{noun}在{dataset}数据集上的{noun}{verb}了{pct}。",
    "如{xref}所示，{adj}{noun}能够有效{verb}{noun}{noun}。",
    "{noun}{verb}是{noun}{noun}中的关键问题之一[{cite}]。",
    "与{adj}{noun}相比，{noun}{verb}的{noun}更加{adj}。",
    "然而，现有{noun}难以{verb}{adj}的{noun}{noun}，{conn}影响了{noun}的{noun}。",
    "为了解决这一问题，我们{verb}{noun}和{noun}，并{verb}{noun}。",
    "该{noun}共训练{int}轮，{noun}为{float}。",
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN_NAMES = words("伟 娜 磊 敏 静 强 军 洋 勇 艳 杰 涛 明 超 秀英 华 平 刚 晓东 志强")
JOURNALS = words("计算机学报 软件学报 中文信息学报 自动化学报 计算机研究与发展 电子学报")


class ChineseWriter(Writer):
    templates = TEMPLATES
    sections = words("引言 相关工作 本文方法 特征提取 实验 实验设置 消融实验 结果分析 讨论 结论 数据集 评价指标")
    xref_kinds = ("图", "表", "式")
    figure_labels = ("图{}：", "图 {}：")
    table_labels = ("表{}：", "表 {}：")
    table_corners = ("方法", "模型", "设置")
    metrics = words("准确率 召回率 F1值 mAP 参数量 速度")
    methods = ("基线", "本文方法", "LayoutLMv3", "Faster R-CNN", "DiT", "文献[12]", "多模态融合", "仅图像")
    axes = ("迭代次数", "准确率(%)", "损失", "阈值", "时间(s)")
    box_names = words("输入 编码器 融合 解码器 输出 骨干网络 检测头 文本 图像")
    series = ("本文方法", "基线", "仅图像", "仅文本")

    def word_slots(self):
        rng = self.rng
        return {
            "adj": lambda: rng.choice(ADJECTIVES),
            "noun": lambda: rng.choice(NOUNS),
            "verb": lambda: rng.choice(VERBS),
            "conn": lambda: rng.choice(CONNECTIVES),
        }

    def paragraph(self, num_words):
        # A Chinese "word" here is about two characters, so lengths match the English ones on the page.
        text = ""
        while len(text) < 2 * num_words:
            text += self.sentence()
        return text

    def references_heading(self):
        return "参考文献"

    def paper_title(self):
        rng = self.rng
        return f"基于{rng.choice(ADJECTIVES)}{rng.choice(NOUNS)}的{rng.choice(NOUNS)}{rng.choice(VERBS)}方法研究"

    def _person(self):
        return self.rng.choice(SURNAMES) + self.rng.choice(GIVEN_NAMES)

    def authors(self):
        return "，".join(f"{self._person()}{self.rng.randint(1, 3)}" for _ in range(self.rng.randint(2, 5)))

    def affiliation(self):
        return f"{self.rng.randint(1, 3)} {self.rng.choice(('清华大学', '北京大学', '浙江大学', '复旦大学'))}计算机科学与技术系"

    def caption_body(self, num_words):
        text = f"{self.rng.choice(DATASETS)}数据集上{self.rng.choice(ADJECTIVES)}{self.rng.choice(NOUNS)}的"
        text += self.rng.choice(("对比", "示例", "结果", "示意图", "统计", "可视化"))
        if num_words > 12:
            text += "。" + self.paragraph(num_words - 10)
        return text

    def reference(self, number):
        rng = self.rng
        if rng.random() < 0.4:
            return latin_reference(rng, number, self.reference_style)
        authors = "，".join(self._person() for _ in range(rng.randint(1, 3)))
        title = f"基于{rng.choice(ADJECTIVES)}{rng.choice(NOUNS)}的{rng.choice(NOUNS)}{rng.choice(VERBS)}研究"
        first_page = rng.randint(1, 900)
        return (
            f"[{number}] {authors}. {title}[J]. {rng.choice(JOURNALS)}, {rng.randint(1995, 2023)}, "
            f"{rng.randint(1, 45)}({rng.randint(1, 12)}): {first_page}-{first_page + rng.randint(5, 20)}."
        )

    def header_items(self, page_number):
        rng = self.rng
        left = rng.choice((rng.choice(JOURNALS), f"{self._person()}等：{self.paper_title()}"))
        right = rng.choice((str(page_number), f"第 {rng.randint(1, 45)} 卷 第 {rng.randint(1, 12)} 期"))
        return left, right

    def footer_items(self, page_number):
        rng = self.rng
        left = rng.choice(
            (
                f"收稿日期：{rng.randint(2000, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                f"© {rng.randint(2000, 2024)} 中国学术期刊电子出版社",
            )
        )
        return left, rng.choice((str(page_number), f"第 {page_number} 页"))
