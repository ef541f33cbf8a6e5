"""A generated, seeded corpus of a team's documents in Chinese and English, with labelled questions.

Used by bench/knowledge.py. `build(seed, scale)` returns the same bytes for the same arguments:

- product sheets (Markdown), product FAQs (Markdown), price lists (CSV),
- office policies (Markdown and plain text; some Chinese text files in GB18030),
- service runbooks (Markdown), meeting notes (Markdown and plain text), office IT FAQs,
- an office directory, vendor contracts, an asset inventory, an on-call rota (CSV),
- a few announcements (HTML).

Every document states facts of its own (prices, limits, ports, people, dates); each fact is
recorded with the document that holds it, a string the answering passage contains, and
paraphrased questions in English and Chinese. `Corpus.questions` picks questions from those
facts: as many English as Chinese, some asked across languages, one per document at most.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
from dataclasses import dataclass
from typing import Callable, Sequence

KB_COMPANY, KB_PRODUCT, KB_ENGINEERING = "company", "product", "engineering"
KBS = (KB_COMPANY, KB_PRODUCT, KB_ENGINEERING)


@dataclass(frozen=True)
class Doc:
    """One file as a person would upload it."""

    filename: str
    kb: str
    lang: str  # "en" or "zh"
    kind: str  # product, faq, policy, runbook, meeting, table, page
    data: bytes


@dataclass(frozen=True)
class Fact:
    """A fact one document states, the string that shows it, and questions that ask for it."""

    doc: str
    doc_lang: str
    fact: str
    topic: str
    en: tuple[str, ...]
    zh: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    """A labelled question: its answer is in `doc`, in a passage containing `fact`."""

    text: str
    lang: str
    doc: str
    doc_lang: str
    fact: str
    topic: str

    @property
    def bucket(self) -> str:
        """en, zh, the cross-lingual en->zh / zh->en, or none (the documents do not answer it)."""
        if not self.answerable:
            return "none"
        return self.lang if self.lang == self.doc_lang else f"{self.lang}->{self.doc_lang}"

    @property
    def answerable(self) -> bool:
        """Whether some document answers it."""
        return bool(self.doc)


# Questions a team could ask that no generated document answers (checked against the corpus:
# no insurance, auditors, gyms, parties, pensions, options, pets, dress code, visas, check-ups),
# with off-topic ones of the kind people also send a bot.
UNANSWERABLE = (
    ("Does our health insurance cover dental cleanings?", "en"),
    ("Who is the company's external auditor this year?", "en"),
    ("Is there a discount for the gym near the office?", "en"),
    ("When is the Christmas party and where is it held?", "en"),
    ("How much does the company pay into my pension?", "en"),
    ("When do my stock options vest?", "en"),
    ("Can I bring my dog to the office?", "en"),
    ("What is the dress code for client meetings?", "en"),
    ("Where can I lock my bicycle at work?", "en"),
    ("What's the weather going to be like in Paris tomorrow?", "en"),
    ("Who won the Champions League final last year?", "en"),
    ("Can you recommend a good recipe for banana bread?", "en"),
    ("公司的商业医疗保险包括牙科吗？", "zh"),
    ("今年的年会在哪里办？", "zh"),
    ("公司有没有和附近的健身房合作办卡？", "zh"),
    ("公积金每个月公司交多少？", "zh"),
    ("期权什么时候可以行权？", "zh"),
    ("办公室可以带宠物来吗？", "zh"),
    ("员工体检一般安排在几月份？", "zh"),
    ("去美国出差的签证公司能帮忙办吗？", "zh"),
    ("咖啡机坏了找谁修？", "zh"),
    ("明天上海天气怎么样？", "zh"),
    ("推荐几部好看的科幻电影", "zh"),
    ("红烧肉怎么做好吃？", "zh"),
)


@dataclass(frozen=True)
class Corpus:
    """The documents and every fact they state."""

    docs: tuple[Doc, ...]
    facts: tuple[Fact, ...]
    seed: int

    def unanswerable(self, limit: int | None = None) -> list[Question]:
        """Questions no document answers, English and Chinese alternating, at most `limit`."""
        en = [q for q in UNANSWERABLE if q[1] == "en"]
        zh = [q for q in UNANSWERABLE if q[1] == "zh"]
        mixed = [q for pair in zip(en, zh) for q in pair]
        return [Question(text, lang, "", "", "", "none") for text, lang in mixed[:limit]]

    def questions(self, quotas: dict[tuple[str, str], int]) -> list[Question]:
        """Pick questions per (question language, document language), spread over topics."""
        rng = random.Random(self.seed + 1)
        facts = list(self.facts)
        rng.shuffle(facts)
        used_docs: set[str] = set()
        picked: list[Question] = []
        for (qlang, dlang), count in quotas.items():
            pool = [f for f in facts if f.doc_lang == dlang and getattr(f, qlang)]
            by_topic: dict[str, list[Fact]] = {}
            for f in pool:
                by_topic.setdefault(f.topic, []).append(f)
            topics = sorted(by_topic)
            rng.shuffle(topics)
            taken = 0
            while taken < count and any(by_topic.values()):
                for topic in topics:
                    if taken >= count:
                        break
                    candidates = by_topic[topic]
                    while candidates and candidates[0].doc in used_docs:
                        candidates.pop(0)
                    if not candidates:
                        continue
                    f = candidates.pop(0)
                    used_docs.add(f.doc)
                    text = rng.choice(getattr(f, qlang))
                    picked.append(Question(text, qlang, f.doc, f.doc_lang, f.fact, f.topic))
                    taken += 1
        return picked


# ---- vocabularies --------------------------------------------------------------------------

BRANDS = ["Corvid", "Lumio", "Tessera", "Halcyon", "Quillon", "Brisa", "Kairo", "Novus", "Sable",
          "Veridian", "Altair", "Cinder", "Fennec", "Glint", "Ionis", "Marlow", "Osprey", "Rivet",
          "Solace", "Tarn", "Umbra", "Wren", "Yarrow", "Zenith"]
CATEGORIES = [  # English, Chinese, capacity label en/zh, capacity values
    ("access point", "无线接入点", "Max concurrent clients", "最大并发终端数", ["150", "250", "400", "600"]),
    ("edge router", "边缘路由器", "Routing throughput", "路由吞吐量", ["1.2 Gbps", "2.5 Gbps", "5 Gbps"]),
    ("network storage appliance", "网络存储设备", "Drive bays", "硬盘位", ["2", "4", "6", "8"]),
    ("IP camera", "网络摄像机", "Resolution", "分辨率", ["4 MP", "5 MP", "8 MP"]),
    ("label printer", "标签打印机", "Print speed", "打印速度", ["150 mm/s", "200 mm/s", "300 mm/s"]),
    ("smart door lock", "智能门锁", "Stored credentials", "可存储凭证数", ["500", "1,000", "3,000"]),
    ("badge reader", "门禁读卡器", "Read range", "读卡距离", ["3 cm", "5 cm", "8 cm"]),
    ("conference speakerphone", "会议全向麦克风", "Pickup range", "拾音半径", ["3 m", "5 m", "6 m"]),
    ("UPS", "不间断电源", "Runtime at half load", "半载续航时间", ["12 min", "18 min", "25 min"]),
    ("barcode scanner", "条码扫描枪", "Scan rate", "扫描速率", ["100 scans/s", "300 scans/s"]),
    ("thin client", "瘦客户机", "Memory", "内存", ["4 GB", "8 GB", "16 GB"]),
    ("PoE switch", "PoE 交换机", "PoE budget", "PoE 总功率", ["65 W", "130 W", "370 W"]),
]
EN_OFFICES = [("Berlin", "柏林", "€"), ("Lisbon", "里斯本", "€"), ("Dublin", "都柏林", "€"),
              ("Warsaw", "华沙", "€"), ("Toronto", "多伦多", "CA$"), ("Austin", "奥斯汀", "$"),
              ("Singapore", "新加坡", "S$"), ("Sydney", "悉尼", "A$"), ("London", "伦敦", "£")]
ZH_OFFICES = [("北京", "Beijing"), ("上海", "Shanghai"), ("深圳", "Shenzhen"), ("杭州", "Hangzhou"),
              ("成都", "Chengdu"), ("武汉", "Wuhan"), ("南京", "Nanjing"), ("西安", "Xi'an"),
              ("广州", "Guangzhou"), ("苏州", "Suzhou")]
TEAMS = [("Payments", "支付组"), ("Search", "搜索组"), ("Identity", "账号组"),
         ("Platform", "基础平台组"), ("Data", "数据组"), ("Growth", "增长组"),
         ("Mobile", "移动端组"), ("Logistics", "物流组")]
SVC_A = ["billing", "order", "search", "auth", "payment", "inventory", "notification", "report",
         "media", "ledger", "shipping", "pricing", "catalog", "session", "audit", "export",
         "coupon", "invoice", "geo", "review"]
SVC_B = ["gateway", "sync", "indexer", "proxy", "worker", "api", "scheduler", "cache", "router",
         "bridge"]
EN_FIRST = ["Maria", "James", "Aisha", "Lukas", "Sofia", "Daniel", "Priya", "Tomás", "Emma",
            "Noah", "Hannah", "Mateo", "Olivia", "Ethan", "Chloe", "Ravi", "Ingrid", "Pedro",
            "Yusuf", "Clara", "Felix", "Nadia", "Oscar", "Leah"]
EN_LAST = ["Lopez", "Fischer", "Okafor", "Novak", "Silva", "Murphy", "Kowalski", "Tanaka",
           "Brennan", "Costa", "Meyer", "Haddad", "Larsen", "Patel", "Rossi", "Dubois", "Schmidt",
           "Walsh", "Nguyen", "Moreau", "Jensen", "Ward", "Varga", "Ortiz"]
ZH_SURNAME = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高梁宋郑谢韩唐冯于董萧")
ZH_GIVEN = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "勇", "艳", "杰", "涛", "明", "超", "霞", "平",
            "刚", "桂英", "建华", "晓东", "海燕", "志强", "丽娟", "思远", "雨桐", "子涵", "浩然",
            "欣怡", "宇航", "嘉怡", "俊杰"]
VENDOR_A = ["Brightline", "Northgate", "Bluewater", "Keystone", "Summit", "Harbor", "Redwood",
            "Clearpath", "Ironbridge", "Silverleaf", "Greenfield", "Starling", "Meridian", "Oakmont"]
VENDOR_B = ["Facilities", "Logistics", "Catering", "Security Services", "Print Solutions",
            "Cloud Services", "Staffing", "Legal", "Travel", "Telecom"]
CITIES = [(o[0], o[1]) for o in EN_OFFICES] + [(o[1], o[0]) for o in ZH_OFFICES]
REGIONS = [("Brazil", "巴西"), ("Japan", "日本"), ("Germany", "德国"), ("Mexico", "墨西哥"),
           ("South Korea", "韩国"), ("France", "法国"), ("Australia", "澳大利亚"),
           ("Indonesia", "印度尼西亚"), ("Canada", "加拿大"), ("Spain", "西班牙"),
           ("Thailand", "泰国"), ("Poland", "波兰")]

# ---- text pools (English, Chinese) ----------------------------------------------------------

PRODUCT_OVERVIEW = (
    ["The {name} is a {cat} designed for small and mid-sized offices that need reliable service "
     "without a dedicated IT team.",
     "It replaces the previous generation and keeps the same mounting bracket, so existing "
     "installations can be upgraded in place.",
     "Management runs through the cloud console or a local web interface; the basic feature set "
     "needs no subscription.",
     "Most customers deploy it in branch offices, retail stores and co-working spaces.",
     "The housing is made of recycled aluminium and is rated for continuous operation.",
     "Its configuration can be exported as one file and restored on a replacement unit in minutes.",
     "A companion mobile app guides installers through the first-time setup.",
     "The design of the {name} reflects field feedback from our largest reseller partners.",
     "Every unit runs a 48-hour burn-in test before it leaves the factory.",
     "Installers can set up a typical site with it in under an hour.",
     "Compared with the previous model it needs less power at idle and runs quieter.",
     "The packaging is plastic-free and fully recyclable."],
    ["{name}是一款面向中小型办公室的{cat}，无需专职运维人员即可稳定运行。",
     "本产品沿用上一代的安装支架，现有部署可以原位升级。",
     "设备支持云端控制台和本地网页两种管理方式，基础功能无需订阅。",
     "典型应用场景包括分支机构、连锁门店和联合办公空间。",
     "外壳采用再生铝材，可长时间连续运行。",
     "配置可以导出为单个文件，更换设备时几分钟即可恢复。",
     "配套的手机应用会引导安装人员完成首次配置。",
     "{name}的设计吸收了多家核心渠道伙伴的一线反馈。",
     "每台设备出厂前都经过四十八小时老化测试。", "安装人员通常一小时内即可完成一个站点的部署。",
     "与上一代相比，待机功耗更低，运行更安静。", "包装不含塑料，可完全回收。"])
PRODUCT_FEATURES = (
    ["Zero-touch provisioning from the cloud console", "Dual power inputs with automatic failover",
     "Role-based access for administrators", "Audit log kept for 90 days",
     "Remote packet capture for troubleshooting", "Scheduled reboots and firmware updates",
     "SNMP v3 and syslog export", "Single sign-on with SAML 2.0",
     "Tamper alarm with e-mail notification", "Energy-saving mode outside office hours",
     "Open REST API for automation", "Multi-site dashboard"],
    ["云端零接触开局", "双电源输入，自动切换", "管理员分级权限", "审计日志保留 90 天", "远程抓包排障",
     "定时重启与定时升级", "支持 SNMP v3 和 syslog 外发", "支持 SAML 2.0 单点登录", "防拆告警并邮件通知",
     "非办公时间自动节能", "开放 REST API，便于自动化", "多站点统一看板"])
PRODUCT_ORDERING = (
    ["Volume discounts start at 20 units; ask the partner desk for a quote.",
     "Prices are reviewed every quarter and published on the partner portal.",
     "Orders placed before 14:00 ship the same working day from the regional warehouse.",
     "Demo units can be borrowed for up to two weeks.",
     "Each box contains the unit, a wall bracket, screws and a quick-start card."],
    ["采购 20 台以上可申请批量折扣，请联系渠道部报价。", "价格每季度调整一次，以渠道门户公布为准。",
     "工作日 14:00 前下单，当天从区域仓库发货。", "样机最长可借用两周。",
     "包装内含主机、壁挂支架、螺丝和快速入门卡片。"])
PRODUCT_SUPPORT = (
    ["Support requests go to the partner helpdesk, which answers within one business day.",
     "Advance replacement is available for customers with an active care plan.",
     "Units returned for repair must keep the original serial number label.",
     "Extended care plans can be bought within 90 days of delivery.",
     "Damage caused by lightning or liquids is not covered."],
    ["技术支持请求由渠道服务台受理，一个工作日内答复。", "购买了延保服务的客户可享受先换后修。",
     "返修设备必须保留原始序列号标签。", "签收后 90 天内可以加购延保服务。", "雷击或进液造成的损坏不在保修范围内。"])
PRODUCT_COMPAT = (
    ["The {name} works with Windows 10 and later, macOS 12 and later, and current Linux "
     "distributions.",
     "It connects to the major identity providers through SAML or LDAP.",
     "Controllers running firmware older than 2.0 cannot adopt this model.",
     "Mixed deployments with the previous generation are supported in the same site.",
     "The REST API is versioned; scripts written for version 1 keep working."],
    ["{name}兼容 Windows 10 及以上、macOS 12 及以上和主流 Linux 发行版。",
     "可以通过 SAML 或 LDAP 对接主流身份认证系统。", "固件低于 2.0 的控制器无法纳管此型号。",
     "同一站点内可以与上一代产品混合部署。", "REST API 有版本号，为第 1 版编写的脚本可以继续使用。"])
PRODUCT_INSTALL = (
    ["Mount the unit at least 30 cm away from metal cabinets.",
     "Use the supplied screws on drywall; concrete walls need anchors.",
     "Power it on and wait until the status light turns solid blue before adopting it.",
     "Note the serial number before mounting; it is printed on the back.",
     "Keep the first boot connected to the internet so it can fetch the latest firmware."],
    ["安装位置距离金属机柜至少 30 厘米。", "石膏板墙面使用随附螺丝，混凝土墙面需要膨胀螺栓。",
     "上电后等待状态灯变为蓝色常亮，再进行纳管。", "安装前先记下机身背面的序列号。",
     "首次启动时请保持联网，以便自动获取最新固件。"])
PRODUCT_LIMITS = (
    ["The local web interface allows one administrator session at a time.",
     "Reports older than 30 days are only available in the cloud console.",
     "Mesh mode is not available when the unit runs on the basic PoE injector.",
     "Custom certificates must be RSA 2048 or ECDSA P-256.",
     "Firmware downgrades below the shipping version are blocked."],
    ["本地网页管理界面同一时间只允许一个管理员登录。", "30 天以前的报表只能在云端控制台查看。",
     "使用基础款 PoE 供电器时无法开启 Mesh 组网。", "自定义证书必须是 RSA 2048 或 ECDSA P-256。",
     "固件不允许降级到出厂版本以下。"])

POLICY_FILLER = (
    ["This policy is reviewed once a year by the People team together with Finance.",
     "Managers are responsible for making sure their teams know these rules.",
     "Where local law gives employees more, local law applies.",
     "Questions about this policy go to the People team's shared mailbox.",
     "Exceptions must be approved in writing before the cost is incurred.",
     "Costs that break these rules may not be reimbursed.",
     "The policy applies to permanent staff, fixed-term staff and interns.",
     "Contractors follow the terms of their own contracts instead.",
     "Receipts must be legible; photos taken with the expense app are accepted.",
     "Repeated violations are treated as a disciplinary matter.",
     "The latest version of this document is always the one on the intranet.",
     "Earlier versions and local guidelines are replaced by this document.",
     "Approvals are recorded in the HR system so that audits can trace them.",
     "Team leads may set stricter rules for their own teams, but not looser ones.",
     "New joiners confirm during onboarding that they have read this policy.",
     "Finance checks a random sample of claims every month.",
     "If two rules seem to conflict, ask the People team before acting.",
     "Cost centres are charged at the end of each month."],
    ["本制度由人力资源部会同财务部每年修订一次。", "各部门负责人有责任确保团队成员知晓本制度。",
     "当地法律法规有更有利于员工的规定时，从其规定。", "对本制度有疑问，请发邮件至人力资源部公共邮箱。",
     "特殊情况须在费用发生前取得书面批准。", "违反本制度产生的费用，公司有权不予报销。",
     "本制度适用于正式员工、合同制员工及实习生。", "外包人员按其合同约定执行。",
     "票据须清晰可辨，可使用报销应用拍照上传。", "多次违反本制度的，按公司纪律处分规定处理。",
     "本文件以内网发布的最新版本为准。", "本制度发布后，此前的版本及各地细则同时废止。",
     "所有审批记录保存在人事系统中，以备审计。", "各团队可以制定更严格的细则，但不得放宽本制度的标准。",
     "新员工入职时须确认已阅读本制度。", "财务部每月随机抽查部分报销单据。",
     "规定之间如有冲突，请先咨询人力资源部。", "相关费用于每月月底计入各成本中心。"])
RUNBOOK_FILLER = (
    ["Check the dashboard before changing anything; most incidents are visible there first.",
     "Announce every manual change in the incident channel.",
     "Never restart all replicas at once; keep at least two serving traffic.",
     "Configuration lives in the service repository and is deployed with the code.",
     "Secrets come from the vault at start-up and are never written to disk.",
     "The service is stateless; all state lives in the database and the queue.",
     "Logs are shipped to the central log store and kept for 14 days.",
     "Load tests run every Tuesday night against the staging environment.",
     "Feature flags can switch off the expensive code paths during an incident.",
     "After an incident, write the post-mortem within five working days.",
     "Traffic can be shifted to the other region in about ten minutes if a zone fails.",
     "Database migrations run before the new version starts taking traffic.",
     "The staging environment mirrors production but with a tenth of the capacity.",
     "Rate limits protect the service from a single noisy client."],
    ["变更前先看监控大盘，大多数故障都会先在大盘上体现。", "所有手工操作都要在故障群里同步。",
     "不要同时重启全部副本，至少保留两个副本对外服务。", "配置文件放在服务代码仓库里，随代码一起发布。",
     "密钥在启动时从密钥管理系统读取，绝不落盘。", "服务本身无状态，所有状态保存在数据库和消息队列中。",
     "日志统一采集到日志平台，保留 14 天。", "每周二晚上在预发环境执行压测。",
     "故障期间可以通过功能开关关闭高开销的逻辑。", "故障结束后五个工作日内完成复盘报告。",
     "单个可用区故障时，约十分钟内可以把流量切到另一个区域。", "数据库变更在新版本接流量之前执行。",
     "预发环境与生产环境结构一致，容量为生产的十分之一。", "限流策略可以防止单个异常客户端拖垮服务。"])
MEETING_FILLER = (
    ["We reviewed last week's action items; most are done, two carry over.",
     "The team discussed the on-call load, which has gone down since the alert clean-up.",
     "Hiring is on track; two candidates are in the final round.",
     "Customer feedback from the last release was mostly positive.",
     "Several people raised that the staging environment is too slow for demos.",
     "We agreed to keep the meeting to 30 minutes from now on.",
     "The quarterly planning template is ready for review.",
     "Dependencies on the platform team are the main risk for next month.",
     "The support queue is back under 40 open tickets.",
     "We should document the release checklist better; new joiners keep asking about it.",
     "The last incident review found two missing alerts; both have been added.",
     "Marketing wants a short demo video before the next launch.",
     "Test coverage of the checkout flow went up to 78 percent.",
     "The team asked for a quiet morning without meetings on Wednesdays.",
     "Cloud costs rose last month because of a forgotten test cluster.",
     "Two customers asked for single sign-on; product will prioritise it."],
    ["回顾了上周的待办事项，大部分已完成，两项顺延。", "讨论了值班压力，告警治理之后夜间告警明显减少。",
     "招聘进展顺利，两位候选人进入终面。", "上个版本的客户反馈总体正面。", "多位同事反映预发环境太慢，影响演示。",
     "约定今后周会控制在 30 分钟以内。", "季度规划模板已经准备好，请大家评审。",
     "下个月的主要风险是对基础平台组的依赖。", "客服工单积压已降到 40 单以内。",
     "发布检查清单需要补充文档，新同事经常问到。", "上次故障复盘发现缺少两条告警，现已补齐。",
     "市场部希望下次发布前准备一段演示视频。", "结算流程的测试覆盖率提升到了百分之七十八。",
     "大家希望周三上午不安排会议，留出专注时间。", "上个月云成本上涨，原因是一个测试集群忘了释放。",
     "两家客户提出需要单点登录，产品侧会优先排期。"])
MEETING_AGENDA = (
    ["Action items from last week", "Release status", "Incidents and on-call", "Hiring",
     "Roadmap questions", "Customer escalations", "Budget", "Any other business"],
    ["上周待办回顾", "版本发布进度", "故障与值班", "招聘", "路线图问题", "客户升级问题", "预算", "其他事项"])
MEETING_TASKS = (
    ["update the release checklist", "share the load-test results", "book the team offsite",
     "draft the hiring plan", "clean up the stale alerts", "review the vendor quote",
     "prepare the demo for the sales team", "write the migration guide"],
    ["更新发布检查清单", "分享压测结果", "预订团建场地", "起草招聘计划", "清理过期告警", "评审供应商报价",
     "为销售团队准备演示", "编写迁移指南"])
BUDGET_PURPOSES = [
    ("the customer advisory board in {city}", "{city}客户顾问委员会"),
    ("the developer conference booth in {city}", "{city}开发者大会展位"),
    ("new meeting-room screens in {city}", "{city}办公室会议室屏幕更换"),
    ("the partner training tour in {city}", "{city}渠道伙伴培训巡讲"),
    ("the summer intern programme in {city}", "{city}暑期实习生项目"),
    ("the user research study in {city}", "{city}用户调研项目"),
]
VENDOR_SERVICES = [
    ("office cleaning in {city}", "{city}办公室保洁"), ("security guards for the {city} office",
                                                      "{city}办公室安保"),
    ("the shuttle bus in {city}", "{city}班车服务"), ("catering for the {city} canteen", "{city}食堂餐饮"),
    ("printer leasing in {city}", "{city}打印机租赁"),
]
LAUNCH_REASONS = (["the certification is not finished", "the localisation needs another pass",
                   "the partner channel asked for more training time", "stock arrives late"],
                  ["认证尚未完成", "本地化需要再改一轮", "渠道伙伴希望有更多培训时间", "备货到港推迟"])
ERRORS = [  # short, cause, fix verb (en); short, cause (zh)
    ("Connection pool exhausted", "slow queries hold database connections", "drain --graceful",
     "数据库连接池耗尽", "慢查询长时间占用连接"),
    ("Token signature invalid", "the signing key was rotated on one side only", "rotate-keys",
     "令牌签名无效", "签名密钥只在一侧完成了轮换"),
    ("Stale cache entries", "a deploy changed the cache schema", "flush-cache --all",
     "缓存数据过期", "发布修改了缓存结构"),
    ("Consumer lag too high", "a poison message blocks the partition", "skip-poison --partition",
     "消费延迟过高", "有异常消息阻塞了分区"),
    ("Certificate expired", "the automatic renewal job failed", "renew-cert --force",
     "证书过期", "自动续期任务失败"),
    ("Index out of date", "the nightly rebuild was interrupted", "reindex --partial",
     "索引过期", "夜间重建任务被中断"),
    ("Disk nearly full", "old log segments were not compacted", "compact-logs",
     "磁盘即将写满", "旧日志分段没有压缩"),
]
RUNTIMES = ["Kubernetes (three replicas)", "Kubernetes (two replicas per zone)", "two VMs behind HAProxy",
            "Nomad (four allocations)"]
RUNTIMES_ZH = ["Kubernetes（三副本）", "Kubernetes（每个可用区两个副本）", "HAProxy 后的两台虚拟机",
               "Nomad（四个实例）"]
SVC_PURPOSE = (["handles {a} requests for the web and mobile apps", "keeps {a} data in step between "
                "the regions", "runs the nightly {a} jobs", "serves the internal {a} API"],
               ["负责网页端和移动端的{a}请求", "负责各区域之间的{a}数据同步", "执行每晚的{a}批处理任务",
                "提供内部{a} API"])


def en_date(d: dt.date) -> str:
    """March 18, 2025."""
    return f"{d:%B} {d.day}, {d.year}"


def zh_date(d: dt.date) -> str:
    """2025年3月18日."""
    return f"{d.year}年{d.month}月{d.day}日"


# ---- document builders -------------------------------------------------------------------------

Block = object  # str paragraph | ("list", items) | ("table", header, rows) | ("code", text)


def markdown(title: str, sections: Sequence[tuple[str, Sequence[Block]]],
             front_matter: bool = False) -> bytes:
    """A Markdown document: an H1 title, then one H2 per section."""
    out = [f"---\ntitle: {title}\n---\n"] if front_matter else []
    out.append(f"# {title}\n")
    for heading, blocks in sections:
        out.append(f"## {heading}\n")
        for block in blocks:
            out.append(_md_block(block))
    return "\n".join(out).encode("utf-8")


def _md_block(block: Block) -> str:
    if isinstance(block, str):
        return block + "\n"
    kind = block[0]  # type: ignore[index]
    if kind == "list":
        return "\n".join(f"- {item}" for item in block[1]) + "\n"  # type: ignore[index]
    if kind == "table":
        _, header, rows = block  # type: ignore[misc]
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    if kind == "code":
        return f"```\n{block[1]}\n```\n"  # type: ignore[index]
    raise ValueError(kind)


def plain_text(title: str, sections: Sequence[tuple[str, Sequence[Block]]]) -> str:
    """The same structure as plain text: headings as their own lines, blank lines between."""
    out = [title, "=" * 8, ""]
    for heading, blocks in sections:
        out.append(heading)
        for block in blocks:
            if isinstance(block, str):
                out.append(block)
            elif block[0] == "list":  # type: ignore[index]
                out.extend(f"* {item}" for item in block[1])  # type: ignore[index]
            else:
                out.append(str(block[1]))  # type: ignore[index]
        out.append("")
    return "\n".join(out)


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    """A CSV file with a header row."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def html_page(title: str, heading: str, paragraphs: Sequence[str], lang: str) -> bytes:
    """An intranet page with navigation and footer around the article."""
    nav = ("Home | News | People | IT help | Search" if lang == "en"
           else "首页 | 新闻 | 通讯录 | IT 帮助 | 搜索")
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return (f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title>'
            f"</head><body><nav>{nav}</nav><main><article><h1>{heading}</h1>\n{body}\n"
            f"</article></main><footer>© Intranet · Internal use only</footer></body></html>"
            ).encode("utf-8")


class _Gen:
    """Builds the documents and their facts from one seeded random generator."""

    def __init__(self, seed: int, scale: float) -> None:
        self.rng = random.Random(seed)
        self.scale = scale
        self.docs: list[Doc] = []
        self.facts: list[Fact] = []
        self._used: set[str] = set()

    def count(self, full: int, minimum: int = 1) -> int:
        return max(minimum, round(full * self.scale))

    def unique(self, make: Callable[[], str]) -> str:
        for _ in range(10_000):
            value = make()
            if value not in self._used:
                self._used.add(value)
                return value
        raise RuntimeError("ran out of unique values")

    def unique_pair(self, templates: Sequence[tuple[str, str]],
                    cities: Sequence[tuple[str, str]]) -> tuple[str, str]:
        """An (English, Chinese) template pair filled with a city, never the same twice."""
        key = self.unique(lambda: f"{self.rng.randrange(len(templates))}|{self.rng.randrange(len(cities))}")
        t, c = (int(x) for x in key.split("|"))
        (en, zh), (city_en, city_zh) = templates[t], cities[c]
        return en.format(city=city_en), zh.format(city=city_zh)

    def some(self, pool: Sequence[str], k: int, **slots: str) -> list[str]:
        return [s.format(**slots) for s in self.rng.sample(list(pool), min(k, len(pool)))]

    def person(self, lang: str) -> str:
        if lang == "en":
            return self.unique(lambda: f"{self.rng.choice(EN_FIRST)} {self.rng.choice(EN_LAST)}")
        return self.unique(lambda: self.rng.choice(ZH_SURNAME) + self.rng.choice(ZH_GIVEN))

    def date(self, start: dt.date = dt.date(2024, 1, 8), days: int = 540) -> dt.date:
        return start + dt.timedelta(days=self.rng.randrange(days))

    def add(self, filename: str, kb: str, lang: str, kind: str, data: bytes) -> str:
        self.docs.append(Doc(filename, kb, lang, kind, data))
        return filename

    def fact(self, doc: str, lang: str, fact: str, topic: str, en: Sequence[str] = (),
             zh: Sequence[str] = ()) -> None:
        self.facts.append(Fact(doc, lang, fact, topic, tuple(en), tuple(zh)))


# ---- products ----------------------------------------------------------------------------------


def _products(g: _Gen) -> list[dict]:
    products = []
    for i in range(g.count(64, 3)):
        lang = "en" if i % 5 < 3 else "zh"
        cat = CATEGORIES[i % len(CATEGORIES)]
        code = g.unique(lambda: f"{g.rng.choice('ABCDEFGHKLMNPRSTVX')}{g.rng.choice('ABCDEFGHKLMNPRSTVX')}"
                                f"-{g.rng.randrange(100, 990)}")
        name = f"{g.rng.choice(BRANDS)} {code}"
        products.append({
            "lang": lang, "name": name, "code": code, "cat": cat,
            "price_usd": g.rng.randrange(89, 2400) + 0.99 * (g.rng.random() < 0.5),
            "price_cny": g.rng.randrange(6, 160) * 100 - 1,
            "warranty": g.rng.choice([12, 18, 24, 30, 36, 48, 60]),
            "power": round(g.rng.uniform(4, 80), 1),
            "tmin": g.rng.choice([-30, -20, -10, 0, 5]), "tmax": g.rng.choice([40, 45, 50, 55, 60]),
            "weight": round(g.rng.uniform(0.2, 9.5), 2),
            "firmware": f"{g.rng.randrange(1, 6)}.{g.rng.randrange(0, 12)}.{g.rng.randrange(1, 40)}",
            "capacity": g.rng.choice(cat[4]),
            "reset": g.rng.choice([5, 8, 10, 12, 15, 20, 30]),
            "ip": f"192.168.{g.rng.randrange(0, 255)}.{g.rng.randrange(1, 254)}",
            "partner": round(g.rng.uniform(50, 1800), 2), "lead": g.rng.randrange(3, 60),
            "sku": f"{code}-{g.rng.choice(['EU', 'US', 'CN', 'GL'])}-{g.rng.randrange(1, 20):02d}",
        })
    return products


def _product_sheet(g: _Gen, p: dict) -> None:
    name, lang, cat = p["name"], p["lang"], p["cat"]
    en = lang == "en"
    k = 0 if en else 1
    slots = {"name": name, "cat": cat[0] if en else cat[1]}
    price = f"${p['price_usd']:,.2f}".replace(".00", "") if en else f"{p['price_cny']:,} 元"
    temp = (f"{p['tmin']} °C to {p['tmax']} °C" if en else f"{p['tmin']} °C 至 {p['tmax']} °C")
    spec_header = ["Parameter", "Value"] if en else ["参数", "数值"]
    labels = (["Model", "Typical power draw", "Operating temperature", "Weight", "Firmware at launch",
               cat[2]] if en else ["型号", "典型功耗", "工作温度", "重量", "出厂固件版本", cat[3]])
    values = [p["code"], f"{p['power']} W", temp, f"{p['weight']} kg", f"v{p['firmware']}",
              p["capacity"]]
    rows = list(zip(labels, values))
    if en:
        title = f"{name} {cat[0].title() if cat[0] != 'UPS' else 'UPS'} — Product Sheet"
        pricing = (f"The list price of the {name} is {price} per unit, excluding tax and shipping. "
                   f"Order it under SKU {p['sku']}.")
        warranty = (f"Every {name} comes with a {p['warranty']}-month limited warranty covering parts "
                    f"and labour from the date of delivery.")
        heads = ["Overview", "Key features", "Specifications", "Pricing and ordering",
                 "Warranty and support", "Compatibility", "Installation notes", "Known limitations"]
    else:
        title = f"{name} {cat[1]}产品说明书"
        pricing = f"{name}的建议零售价为每台 {price}（不含税费和运费），订货型号为 {p['sku']}。"
        warranty = f"{name}自签收之日起提供 {p['warranty']} 个月有限保修，涵盖零部件和人工费用。"
        heads = ["产品概述", "主要功能", "技术参数", "价格与订购", "保修与服务", "兼容性", "安装说明", "已知限制"]
    sections = [
        (heads[0], [(" " if en else "").join(g.some(PRODUCT_OVERVIEW[k], 6, **slots))]),
        (heads[1], [("list", g.some(PRODUCT_FEATURES[k], 6))]),
        (heads[2], [("table", spec_header, [list(r) for r in g.rng.sample(rows, len(rows))])]),
        (heads[3], [pricing + (" " if en else "") + (" " if en else "").join(
            g.some(PRODUCT_ORDERING[k], 3))]),
        (heads[4], [warranty, (" " if en else "").join(g.some(PRODUCT_SUPPORT[k], 3))]),
        (heads[5], [(" " if en else "").join(g.some(PRODUCT_COMPAT[k], 3, **slots))]),
        (heads[6], [("list", g.some(PRODUCT_INSTALL[k], 4))]),
        (heads[7], [("list", g.some(PRODUCT_LIMITS[k], 3))]),
    ]
    doc = g.add(f"product-{p['code'].lower()}.md", KB_PRODUCT, lang, "product",
                markdown(title, sections, front_matter=g.rng.random() < 0.3))
    n = name
    g.fact(doc, lang, f"{p['warranty']}-month" if en else f"{p['warranty']} 个月", "product.warranty",
           [f"How long is the warranty on the {n}?",
            f"If a {n} breaks, for how many months is it covered?"],
           [f"{n}的保修期是多久？", f"{n}坏了能保修几个月？"])
    g.fact(doc, lang, price, "product.price",
           [f"How much does one {n} cost?", f"What is the list price of the {n}?"],
           [f"{n}一台卖多少钱？", f"{n}的建议零售价是多少？"])
    g.fact(doc, lang, f"{p['power']} W", "product.power",
           [f"How many watts does the {n} use?", f"What is the typical power consumption of the {n}?"],
           [f"{n}耗电多少瓦？", f"{n}的功耗大概是多少？"])
    g.fact(doc, lang, temp, "product.temperature",
           [f"What temperature range can the {n} run in?"],
           [f"{n}在什么温度范围内可以正常工作？"])
    g.fact(doc, lang, f"{p['weight']} kg", "product.weight",
           [f"How heavy is the {n}?", f"What does the {n} weigh?"], [f"{n}有多重？"])


def _product_faq(g: _Gen, p: dict) -> None:
    name, lang = p["name"], p["lang"]
    en = lang == "en"
    if en:
        title = f"{name} — Frequently asked questions"
        qa = [
            ("How do I restore factory settings?",
             f"Press and hold the recessed reset button for {p['reset']} seconds until the status "
             "light flashes white, then release it. The unit reboots with its factory configuration."),
            ("What address does the web interface use out of the box?",
             f"Before it is adopted, the unit answers on {p['ip']} with the user name admin and the "
             "password printed on the label."),
            ("Why is the status light blinking amber?",
             "The unit has no internet connection. Check the cable and the upstream firewall."),
            ("How do I update the firmware?",
             "Updates are offered in the cloud console. You can also upload a signed image in the "
             "local web interface under Maintenance."),
            ("Can I return a unit I do not need?",
             "Unopened units can be returned within 30 days of delivery for a full refund."),
            ("Does it work without the cloud console?",
             "Yes. The local web interface covers day-to-day settings; reports and multi-site views "
             "need the cloud console."),
            ("Where do I find the serial number?",
             "On the label on the back of the unit and in the web interface under About."),
            ("How do I get a replacement for a faulty unit?",
             "Open a case with the partner helpdesk and include the serial number and a photo of "
             "the label."),
        ]
    else:
        title = f"{name} 常见问题"
        qa = [
            ("如何恢复出厂设置？",
             f"用卡针按住复位孔内的按钮 {p['reset']} 秒，待状态灯白色闪烁后松开，设备会以出厂配置重启。"),
            ("设备默认的管理地址是什么？", f"纳管之前，设备的管理地址是 {p['ip']}，用户名 admin，密码见机身标签。"),
            ("状态灯为什么黄色闪烁？", "设备无法连接互联网，请检查网线和上游防火墙。"),
            ("如何升级固件？", "云端控制台会推送升级，也可以在本地网页的“维护”页面上传经过签名的固件包。"),
            ("不需要的设备可以退货吗？", "未拆封的设备签收后 30 天内可以全额退款。"),
            ("不用云端控制台可以使用吗？", "可以。日常配置在本地网页即可完成，报表和多站点视图需要云端控制台。"),
            ("序列号在哪里？", "在机身背面的标签上，也可以在网页管理界面的“关于”页面查看。"),
            ("设备故障如何换新？", "请向渠道服务台提交工单，并附上序列号和标签照片。"),
        ]
    g.rng.shuffle(qa)
    doc = g.add(f"faq-{p['code'].lower()}.md", KB_PRODUCT, lang, "faq",
                markdown(title, [(q, [a]) for q, a in qa]))
    n = name
    g.fact(doc, lang, f"{p['reset']} seconds" if en else f"{p['reset']} 秒", "faq.reset",
           [f"How do I factory reset the {n}?", f"How do I wipe the {n} back to its default settings?"],
           [f"{n}怎么恢复出厂设置？", f"{n}要重置成出厂状态应该怎么操作？"])
    g.fact(doc, lang, p["ip"], "faq.ip",
           [f"What IP address does a new {n} use?", f"How do I reach the admin page of a fresh {n}?"],
           [f"新的{n}默认管理 IP 是多少？", f"{n}出厂时的管理地址是什么？"])


def _price_lists(g: _Gen, products: list[dict]) -> None:
    en_rows, zh_rows = [], []
    for p in products:
        if p["lang"] == "en":
            en_rows.append([p["name"], p["sku"], p["cat"][0], f"{p['partner']:.2f}", str(p["lead"])])
        else:
            zh_rows.append([p["name"], p["sku"], p["cat"][1], f"{p['partner'] * 7:.2f}", str(p["lead"])])
    doc = g.add("partner-price-list.csv", KB_PRODUCT, "en", "table", csv_bytes(
        ["Product", "SKU", "Category", "Partner price (USD)", "Lead time (days)"], en_rows))
    for p in products[:40]:
        if p["lang"] == "en":
            g.fact(doc, "en", f"{p['partner']:.2f}", "csv.partner_price",
                   [f"What do resellers pay for the {p['name']}?",
                    f"What is the partner price of the {p['name']}?"],
                   [f"{p['name']}的渠道价是多少？"])
    if zh_rows:
        doc = g.add("渠道价格表.csv", KB_PRODUCT, "zh", "table", csv_bytes(
            ["产品", "订货型号", "品类", "渠道价（元）", "交货周期（天）"], zh_rows))
        for p in products[:40]:
            if p["lang"] == "zh":
                g.fact(doc, "zh", f"{p['partner'] * 7:.2f}", "csv.partner_price",
                       [f"What is the reseller price of the {p['name']} in yuan?"],
                       [f"{p['name']}给经销商的价格是多少？", f"{p['name']}的渠道价是多少元？"])


# ---- policies ----------------------------------------------------------------------------------

POLICY_KINDS = ["travel", "expenses", "leave", "remote", "security"]


def _policy(g: _Gen, kind: str, office: tuple, lang: str, fmt: str) -> None:
    en = lang == "en"
    k = 0 if en else 1
    o, o_other = office[0], office[1]  # the office's name in the document's language, the other
    cur = office[2] if en else ""
    r = g.rng
    facts: list[tuple[str, str, list[str], list[str]]] = []  # fact, topic, en questions, zh questions
    o_en, o_zh = (o, o_other) if en else (o_other, o)

    def money(amount: int) -> str:
        return f"{cur}{amount:,}" if en else f"{amount:,} 元"

    if kind == "travel":
        cap, diem, hours, lead = (r.randrange(12, 40) * 10 if en else r.randrange(35, 90) * 10,
                                  r.randrange(35, 90) if en else r.randrange(8, 30) * 10,
                                  r.choice([4, 5, 6, 7, 8, 9]), r.choice([7, 10, 14, 21]))
        approver = r.choice(["director", "department head", "country manager"]) if en else \
            r.choice(["部门总监", "分管副总裁", "区域总经理"])
        title = f"Travel Policy — {o} Office" if en else f"{o}办公室差旅管理办法"
        clauses = [
            ("Booking", f"Trips from the {o} office are booked through the corporate travel portal at "
                        f"least {lead} days before departure.") if en else
            ("预订", f"{o}办公室员工出差须通过公司差旅平台预订，至少提前 {lead} 天提交申请。"),
            ("Flights", f"Economy class is the default for {o} staff. Business class may be booked for "
                        f"flights longer than {hours} hours with the approval of your {approver}.") if en else
            ("交通", f"{o}办公室员工出差默认乘坐经济舱；单程飞行时间超过 {hours} 小时的，经{approver}批准可乘坐商务舱。"),
            ("Accommodation", f"Hotel costs for trips from the {o} office are reimbursed up to "
                              f"{money(cap)} per night, breakfast included where available.") if en else
            ("住宿", f"{o}办公室员工出差住宿费用按每晚不超过 {money(cap)} 的标准凭票报销，含早餐。"),
            ("Meals", f"Travellers from the {o} office receive a daily meal allowance of {money(diem)}, "
                      "which replaces individual meal receipts.") if en else
            ("伙食补助", f"{o}办公室员工出差期间每天发放伙食补助 {money(diem)}，无需提供餐饮发票。"),
        ]
        facts = [
            (money(cap), "policy.hotel",
             [f"What is the nightly hotel limit for staff travelling from the {o_en} office?",
              f"How much can {o_en} employees spend on a hotel room per night?"],
             [f"{o_zh}办公室的员工出差，酒店每晚最多能报销多少？", f"{o_zh}的同事出差住宿标准是多少钱一晚？"]),
            (f"longer than {hours} hours" if en else f"超过 {hours} 小时", "policy.business_class",
             [f"When may {o_en} staff fly business class?"],
             [f"{o_zh}办公室出差什么情况下可以坐商务舱？"]),
            (money(diem), "policy.per_diem",
             [f"What is the daily meal allowance on trips for the {o_en} office?"],
             [f"{o_zh}办公室出差每天的餐补是多少？"]),
            (f"{lead} days before" if en else f"提前 {lead} 天", "policy.booking_lead",
             [f"How far ahead must people in {o_en} book their business trips?"],
             [f"{o_zh}办公室出差要提前几天订票？"]),
        ]
    elif kind == "expenses":
        days, receipt, paid, ent = (r.choice([14, 21, 30, 45, 60]), r.randrange(2, 15) * 5,
                                    r.choice([5, 7, 10, 15]), r.randrange(4, 16) * 10)
        if not en:
            receipt, ent = receipt * 10, ent * 5
        title = f"Expense Policy — {o} Office" if en else f"{o}办公室费用报销管理规定"
        clauses = [
            ("Deadlines", f"Staff of the {o} office submit expense claims within {days} days of the "
                          f"date the cost was incurred; later claims need the CFO's approval.") if en else
            ("报销时限", f"{o}办公室员工应在费用发生后 {days} 天内提交报销申请，逾期须经财务总监审批。"),
            ("Receipts", f"An itemised receipt is required for every cost above {money(receipt)}.") if en else
            ("票据要求", f"单笔金额超过 {money(receipt)} 的费用必须提供增值税发票。"),
            ("Payment", f"Approved claims are paid with the next payroll run or within {paid} working "
                        "days, whichever comes first.") if en else
            ("付款", f"审批通过的报销款在 {paid} 个工作日内打入员工工资卡。"),
            ("Client entertainment", f"Client meals are capped at {money(ent)} per person, and the "
                                     "names of all guests must be listed on the claim.") if en else
            ("业务招待", f"业务招待餐费标准为每人不超过 {money(ent)}，报销时须注明招待对象。"),
        ]
        facts = [
            (f"within {days} days" if en else f"{days} 天内", "policy.claim_deadline",
             [f"How long do {o_en} employees have to hand in an expense claim?"],
             [f"{o_zh}办公室报销要在多少天内交？", f"{o_zh}的同事花了钱，最晚多久要提交报销？"]),
            (money(ent), "policy.entertainment",
             [f"What is the per-person limit for client dinners at the {o_en} office?"],
             [f"{o_zh}办公室请客户吃饭每人标准是多少？"]),
            (f"{paid} working days" if en else f"{paid} 个工作日", "policy.reimbursement_time",
             [f"How quickly are approved expenses paid out in {o_en}?"],
             [f"{o_zh}办公室报销审批后多久到账？"]),
        ]
    elif kind == "leave":
        annual, carry, sick, parental = (r.randrange(20, 31), g.date(dt.date(2025, 3, 1), 120),
                                         r.choice([2, 3, 4, 5]), r.choice([12, 16, 18, 20, 26]))
        if not en:
            annual = r.randrange(5, 16)
        title = f"Leave Policy — {o} Office" if en else f"{o}办公室休假管理制度"
        clauses = [
            ("Annual leave", f"Full-time employees in the {o} office receive {annual} days of paid "
                             "annual leave per calendar year, pro rata for part-time staff.") if en else
            ("年假", f"{o}办公室全职员工每年享有 {annual} 天带薪年假，兼职员工按比例折算。"),
            ("Carry-over", f"Up to five unused days may be carried over and must be taken by "
                           f"{en_date(carry)}.") if en else
            ("年假结转", f"未休年假最多结转五天，须在 {zh_date(carry)} 前休完，逾期作废。"),
            ("Sick leave", f"A doctor's certificate is needed from the {sick}th day of sickness "
                           "onwards.") if en else
            ("病假", f"连续病假超过 {sick} 天的，须提供医院出具的病假证明。"),
            ("Parental leave", f"Parents in the {o} office may take {parental} weeks of paid parental "
                               "leave within the first year.") if en else
            ("育儿假", f"{o}办公室员工在子女满一周岁前可享受 {parental} 周带薪育儿假。"),
        ]
        facts = [
            (f"{annual} days of paid" if en else f"{annual} 天带薪年假", "policy.annual_leave",
             [f"How many days of annual leave do people in the {o_en} office get?"],
             [f"{o_zh}办公室每年有几天年假？", f"在{o_zh}上班一年能休多少天年假？"]),
            (en_date(carry) if en else zh_date(carry), "policy.carry_over",
             [f"Until when can {o_en} staff use leave carried over from last year?"],
             [f"{o_zh}办公室去年没休完的年假最晚什么时候要休掉？"]),
            (f"{parental} weeks" if en else f"{parental} 周", "policy.parental",
             [f"How much paid parental leave is there in the {o_en} office?"],
             [f"{o_zh}办公室的育儿假有几周？"]),
        ]
    elif kind == "remote":
        days, stipend, core = (r.choice([1, 2, 3]), r.randrange(20, 80) * 10,
                               r.choice(["10:00 to 15:00", "10:00 to 16:00", "9:30 to 15:30"]))
        if not en:
            stipend = r.randrange(10, 60) * 100
        title = f"Remote Work Policy — {o} Office" if en else f"{o}办公室远程办公管理办法"
        clauses = [
            ("Eligibility", f"Employees of the {o} office may work from home up to {days} days a week "
                            "after their probation period, with their manager's agreement.") if en else
            ("适用条件", f"{o}办公室员工转正后，经直属上级同意，每周最多可以居家办公 {days} 天。"),
            ("Equipment", f"A one-off home office stipend of {money(stipend)} covers a chair, a desk "
                          "or a monitor; keep the receipts.") if en else
            ("办公设备", f"公司一次性发放居家办公补贴 {money(stipend)}，用于购买桌椅或显示器，须保留发票。"),
            ("Core hours", f"Everyone is reachable during core hours, {core} local time.") if en else
            ("核心工作时间", f"居家办公期间须保证核心工作时间 {core} 在线。"),
        ]
        facts = [
            (f"up to {days} days a week" if en else f"最多可以居家办公 {days} 天", "policy.remote_days",
             [f"How many days per week can {o_en} employees work from home?"],
             [f"{o_zh}办公室一周能在家办公几天？", f"{o_zh}的同事每周可以远程几天？"]),
            (money(stipend), "policy.stipend",
             [f"How much money do {o_en} staff get to set up a home office?"],
             [f"{o_zh}办公室居家办公补贴有多少钱？"]),
        ]
    else:  # security
        length, lock, report = (r.choice([10, 12, 14, 16]), r.choice([3, 5, 10, 15]),
                                r.choice([1, 2, 4, 12, 24]))
        title = f"Information Security Policy — {o} Office" if en else f"{o}办公室信息安全管理规定"
        clauses = [
            ("Passwords", f"Passwords for {o} office accounts have at least {length} characters and "
                          "are never reused across systems.") if en else
            ("密码", f"{o}办公室所有账号的密码长度不少于 {length} 位，且不得在多个系统中重复使用。"),
            ("Screen lock", f"Laptops lock automatically after {lock} minutes without input.") if en else
            ("锁屏", f"笔记本电脑无操作 {lock} 分钟后必须自动锁屏。"),
            ("Lost devices", f"A lost or stolen laptop or phone must be reported to the {o} IT desk "
                             f"within {report} hours.") if en else
            ("设备丢失", f"笔记本或手机丢失、被盗的，须在 {report} 小时内报告{o}办公室 IT 服务台。"),
            ("Multi-factor authentication", "All remote access uses multi-factor authentication "
                                            "with the company authenticator app.") if en else
            ("多因素认证", "所有远程访问必须使用公司认证器应用进行多因素认证。"),
        ]
        facts = [
            (f"at least {length} characters" if en else f"不少于 {length} 位", "policy.password",
             [f"How long must passwords be in the {o_en} office?"],
             [f"{o_zh}办公室的密码至少要几位？"]),
            (f"after {lock} minutes" if en else f"{lock} 分钟后", "policy.screen_lock",
             [f"After how many idle minutes must laptops lock in {o_en}?"],
             [f"{o_zh}办公室电脑多久不操作要自动锁屏？"]),
            (f"within {report} hours" if en else f"{report} 小时内", "policy.lost_device",
             [f"How soon do I have to report a lost laptop in the {o_en} office?"],
             [f"在{o_zh}办公室丢了电脑，要在多长时间内上报？"]),
        ]
    filler = g.some(POLICY_FILLER[k], len(POLICY_FILLER[k]))
    purpose = ([f"This policy sets out the rules for the {o} office.", *filler[0:3]]
               if en else [f"为规范{o}办公室的管理，特制定本制度。", *filler[0:3]])
    scope = filler[3:6]
    closing = filler[6:8]
    sep = " " if en else ""
    sections = [("Purpose" if en else "目的", [sep.join(purpose)]),
                ("Scope" if en else "适用范围", [sep.join(scope)])]
    for heading, text in clauses:
        sections.append((heading, [text + sep + sep.join(g.some(POLICY_FILLER[k], r.randrange(2, 4)))]))
    sections.append(("Exceptions and contacts" if en else "附则", [sep.join(closing)]))
    numbered = [(f"{i}. {h}" if en else f"第{'一二三四五六七八九十'[i - 1]}条 {h}", b)
                for i, (h, b) in enumerate(sections, 1)]
    slug = o.lower() if en else office[1].lower().replace("'", "")
    if fmt == "txt":
        text = plain_text(title, numbered)
        encoding = "gb18030" if (not en and r.random() < 0.5) else "utf-8"
        doc = g.add(f"{kind}-policy-{slug}.txt", KB_COMPANY, lang, "policy", text.encode(encoding))
    else:
        doc = g.add(f"{kind}-policy-{slug}.md", KB_COMPANY, lang, "policy", markdown(title, numbered))
    for fact, topic, en_q, zh_q in facts:
        g.fact(doc, lang, fact, topic, en_q, zh_q)


def _policies(g: _Gen) -> None:
    combos = [(kind, office, "en") for kind in POLICY_KINDS for office in EN_OFFICES]
    combos += [(kind, office, "zh") for kind in POLICY_KINDS for office in ZH_OFFICES]
    g.rng.shuffle(combos)
    for i, (kind, office, lang) in enumerate(combos[: g.count(56, 4)]):
        _policy(g, kind, office, lang, "txt" if i % 6 == 5 else "md")


# ---- runbooks ----------------------------------------------------------------------------------


def _runbooks(g: _Gen) -> list[tuple[str, str]]:
    services = []
    for i in range(g.count(52, 3)):
        lang = "en" if i % 2 == 0 else "zh"
        en = lang == "en"
        a = g.rng.choice(SVC_A)
        svc = g.unique(lambda: f"{a}-{g.rng.choice(SVC_B)}")
        team = g.rng.choice(TEAMS)
        port = g.rng.randrange(7000, 9900)
        ms = g.rng.choice([250, 300, 400, 500, 600, 800, 1200, 1500])
        primary, secondary = g.person(lang), g.person(lang)
        ext = g.rng.randrange(2000, 8999)
        retention, hour = g.rng.choice([7, 21, 30, 35, 45, 60, 90]), g.rng.randrange(0, 6)
        errors = g.rng.sample(ERRORS, 3)
        codes = [g.unique(lambda: f"E{g.rng.randrange(1000, 9999)}") for _ in errors]
        k = 0 if en else 1
        sep = " " if en else ""
        purpose = g.rng.choice(SVC_PURPOSE[k]).format(a=a)
        if en:
            title = f"Runbook: {svc}"
            sections = [
                ("Overview", [f"{svc} {purpose}. It is owned by the {team[0]} team and runs on "
                              f"{g.rng.choice(RUNTIMES)}. The service listens on port {port} behind "
                              f"the internal load balancer. " + sep.join(g.some(RUNBOOK_FILLER[0], 2))]),
                ("Dashboards and alerts", [
                    f"The main dashboard is https://grafana.internal/d/{svc}. The {svc} latency alert "
                    f"fires when p99 latency stays above {ms} ms for five minutes; the error-rate alert "
                    "fires above 2% of requests.", sep.join(g.some(RUNBOOK_FILLER[0], 2))]),
                ("Deploying", [f"Deploys go through the pipeline; to roll back by hand:",
                               ("code", f"svcctl {svc} rollback --to previous\nsvcctl {svc} status")]),
                ("Restarting safely", [("list", [f"Drain one replica: `svcctl {svc} drain --one`",
                                                 "Wait until its in-flight requests reach zero",
                                                 "Restart it and watch the dashboard for five minutes",
                                                 "Repeat for the next replica"])]),
            ]
            for (short, cause, verb, _, _), code in zip(errors, codes):
                sections.append((f"Error {code}: {short}", [
                    f"Cause: {cause}. Fix: run `svcctl {svc} {verb}` and check that the error rate "
                    "drops within a few minutes. If it does not, escalate."]))
            sections += [
                ("Escalation", [f"The primary on-call engineer for {svc} is {primary} (extension "
                                f"{ext}); the secondary is {secondary}. If neither answers within "
                                f"15 minutes, page the {team[0]} team lead."]),
                ("Backups and retention", [f"Snapshots of the {svc} database are taken every day at "
                                           f"{hour:02d}:30 UTC and kept for {retention} days. "
                                           "Restores are tested once a month."]),
            ]
        else:
            title = f"运维手册：{svc}"
            sections = [
                ("概述", [f"{svc} {purpose}，由{team[1]}负责，部署在{g.rng.choice(RUNTIMES_ZH)}上，"
                        f"在内部负载均衡之后监听 {port} 端口。" + sep.join(g.some(RUNBOOK_FILLER[1], 2))]),
                ("监控与告警", [f"监控大盘地址为 https://grafana.internal/d/{svc}。{svc} 的延迟告警在 p99 延迟"
                            f"连续五分钟超过 {ms} 毫秒时触发；错误率超过 2% 时触发错误率告警。",
                            sep.join(g.some(RUNBOOK_FILLER[1], 2))]),
                ("发布", ["发布走流水线；需要手工回滚时执行：",
                        ("code", f"svcctl {svc} rollback --to previous\nsvcctl {svc} status")]),
                ("安全重启", [("list", [f"先摘掉一个副本：`svcctl {svc} drain --one`", "等待该副本的在途请求降为零",
                                     "重启后观察大盘五分钟", "依次处理下一个副本"])]),
            ]
            for (_, _, verb, short, cause), code in zip(errors, codes):
                sections.append((f"错误 {code}：{short}", [
                    f"原因：{cause}。处理：执行 `svcctl {svc} {verb}`，几分钟内错误率应明显下降，否则升级处理。"]))
            sections += [
                ("升级与联系人", [f"{svc} 的主值班工程师是{primary}（分机 {ext}），副值班是{secondary}。"
                            f"十五分钟内无人响应时，呼叫{team[1]}负责人。"]),
                ("备份与保留", [f"{svc} 数据库每天 UTC {hour:02d}:30 做一次快照，保留 {retention} 天，"
                           "每月做一次恢复演练。"]),
            ]
        doc = g.add(f"runbook-{svc}.md", KB_ENGINEERING, lang, "runbook", markdown(title, sections))
        services.append((svc, lang))
        code, verb = codes[0], errors[0][2]
        g.fact(doc, lang, f"port {port}" if en else f"{port} 端口", "runbook.port",
               [f"Which port does {svc} listen on?", f"What port do I open in the firewall for {svc}?"],
               [f"{svc} 服务用的是哪个端口？"])
        g.fact(doc, lang, primary, "runbook.oncall",
               [f"Who is the primary on-call for {svc}?", f"Who do I call when {svc} is down?"],
               [f"{svc} 挂了应该找谁？", f"{svc} 的主值班是谁？"])
        g.fact(doc, lang, f"{retention} days" if en else f"保留 {retention} 天", "runbook.retention",
               [f"How long do we keep the {svc} database snapshots?"],
               [f"{svc} 的数据库快照保留多久？"])
        g.fact(doc, lang, f"{ms} ms" if en else f"{ms} 毫秒", "runbook.alert",
               [f"At what p99 latency does the {svc} alert go off?"],
               [f"{svc} 的延迟告警阈值是多少？"])
        g.fact(doc, lang, f"svcctl {svc} {verb}", "runbook.error",
               [f"How do I fix error {code} in {svc}?", f"{svc} keeps logging {code}; what should I do?"],
               [f"{svc} 报错 {code} 怎么处理？"])
    return services


# ---- meetings, office FAQs, tables, pages --------------------------------------------------------


def _meetings(g: _Gen, products: list[dict]) -> None:
    for i in range(g.count(70, 3)):
        lang = "en" if i % 2 == 1 else "zh"
        en = lang == "en"
        k = 0 if en else 1
        sep = " " if en else ""
        team = g.rng.choice(TEAMS)
        day = g.date()
        people = [g.person(lang) for _ in range(g.rng.randrange(4, 7))]
        decision_kind = i % 3
        if decision_kind == 0:
            p = products[i % len(products)]
            key = g.unique(lambda: f"launch|{p['name']}|{g.rng.randrange(len(REGIONS))}")
            region = REGIONS[int(key.rsplit("|", 1)[1])]
            launch = g.date(dt.date(2025, 2, 1), 300)
            reason = g.rng.choice(LAUNCH_REASONS[k])
            decision = (f"The {p['name']} launch in {region[0]} moves to {en_date(launch)} because {reason}."
                        if en else f"{p['name']}在{region[1]}的上市时间调整为 {zh_date(launch)}，原因是{reason}。")
            fact = en_date(launch) if en else zh_date(launch)
            qs = ([f"When will the {p['name']} go on sale in {region[0]}?",
                   f"What is the new launch date of the {p['name']} in {region[0]}?"],
                  [f"{p['name']}什么时候在{region[1]}上市？"])
            topic = "meeting.launch"
        elif decision_kind == 1:
            pe, pz = g.unique_pair(BUDGET_PURPOSES, CITIES)
            amount = g.rng.randrange(8, 120) * 500
            decision = (f"We approved a budget of ${amount:,} for {pe}." if en
                        else f"会议批准了{pz}预算 {amount * 7:,} 元。")
            fact = f"${amount:,}" if en else f"{amount * 7:,} 元"
            qs = ([f"How much money was approved for {pe}?"], [f"{pz}批了多少预算？"])
            topic = "meeting.budget"
        else:
            se, sz = g.unique_pair(VENDOR_SERVICES, CITIES)
            vendor = g.unique(lambda: f"{g.rng.choice(VENDOR_A)} {g.rng.choice(VENDOR_B)}")
            decision = (f"{vendor} was chosen as the supplier for {se}, starting next quarter."
                        if en else f"确定由 {vendor} 承接{sz}，下季度开始执行。")
            fact = vendor
            qs = ([f"Which supplier did we pick for {se}?"], [f"{sz}最后选了哪家供应商？"])
            topic = "meeting.vendor"
        talk = g.some(MEETING_FILLER[k], 8)
        owner_tasks = [f"{g.rng.choice(people)}: {t} by {en_date(day + dt.timedelta(days=7))}" if en
                       else f"{g.rng.choice(people)}：{t}，{zh_date(day + dt.timedelta(days=7))}前完成"
                       for t in g.some(MEETING_TASKS[k], 3)]
        title = (f"{team[0]} team weekly sync — {day.isoformat()}" if en
                 else f"{team[1]}周会纪要 {day.isoformat()}")
        sections = [
            ("Attendees" if en else "参会人", [("、" if not en else ", ").join(people)]),
            ("Agenda" if en else "议程", [("list", g.some(MEETING_AGENDA[k], 4))]),
            ("Discussion" if en else "讨论", [sep.join(talk[:4]), sep.join(talk[4:8])]),
            ("Decisions" if en else "决定事项", [("list", [decision])]),
            ("Action items" if en else "待办事项", [("list", owner_tasks)]),
        ]
        stem = f"meeting-{team[0].lower()}-{day.isoformat()}-{i}"
        if i % 5 == 4:
            doc = g.add(stem + ".txt", KB_ENGINEERING, lang, "meeting",
                        plain_text(title, sections).encode("utf-8"))
        else:
            doc = g.add(stem + ".md", KB_ENGINEERING, lang, "meeting", markdown(title, sections))
        g.fact(doc, lang, fact, topic, qs[0], qs[1])


def _office_faqs(g: _Gen) -> None:
    offices = [(o[0], o[1], "en") for o in EN_OFFICES] + [(o[0], o[1], "zh") for o in ZH_OFFICES]
    g.rng.shuffle(offices)
    for name, other, lang in offices[: g.count(14, 2)]:
        en = lang == "en"
        o_en, o_zh = (name, other) if en else (other, name)
        ssid = g.unique(lambda: f"{o_en[:3].upper()}-Guest-{g.rng.randrange(10, 99)}")
        room = g.rng.randrange(100, 1299)
        printer = g.unique(lambda: f"PRN-{o_en[:3].upper()}-{g.rng.randrange(1, 40):02d}")
        hours = g.rng.choice(["8:00 to 18:00", "8:30 to 17:30", "9:00 to 18:00"])
        if en:
            qa = [("How do guests get Wi-Fi?", f"Visitors to the {name} office join the {ssid} network; "
                   "the password is on the screen at reception and changes every Monday."),
                  ("Where do I pick up my access badge?", f"New joiners in {name} collect their badge from "
                   f"the facilities desk in room {room} on their first day."),
                  ("How do I print?", f"Send jobs to the {printer} queue and release them at any printer "
                   "with your badge."),
                  ("When is the IT desk open?", f"The IT desk is staffed on working days from {hours}."),
                  ("How do I book a meeting room?", "Book rooms in the calendar; rooms without a booking "
                   "for 15 minutes are released automatically."),
                  ("Can I bring my own laptop?", "Personal laptops may only use the guest network."),
                  ("Where are the lockers?", "Lockers are next to the kitchen; bring your own padlock."),
                  ("What do I do if my laptop breaks?", "Bring it to the IT desk; a loan laptop is "
                   "usually ready within an hour.")]
            title = f"{name} Office — IT and Facilities FAQ"
        else:
            qa = [("访客怎么连 Wi-Fi？", f"到访{name}办公室的访客请连接 {ssid} 网络，密码显示在前台屏幕上，每周一更换。"),
                  ("门禁卡在哪里领取？", f"{name}办公室新员工入职当天到 {room} 室行政服务台领取门禁卡。"),
                  ("怎么打印？", f"将打印任务发送到 {printer} 队列，然后在任意打印机上刷卡取件。"),
                  ("IT 服务台什么时候有人？", f"IT 服务台工作日 {hours} 有人值守。"),
                  ("怎么预订会议室？", "在日历中预订会议室；预订后 15 分钟无人签到会自动释放。"),
                  ("可以用自己的电脑吗？", "个人电脑只能连接访客网络。"),
                  ("储物柜在哪里？", "储物柜在茶水间旁边，请自备挂锁。"),
                  ("电脑坏了怎么办？", "请把电脑送到 IT 服务台，通常一小时内可以领到备用机。")]
            title = f"{name}办公室 IT 与行政常见问题"
        g.rng.shuffle(qa)
        slug = o_en.lower().replace("'", "")
        doc = g.add(f"office-faq-{slug}.md", KB_COMPANY, lang, "faq", markdown(title, [(q, [a]) for q, a in qa]))
        g.fact(doc, lang, ssid, "faq.wifi",
               [f"What is the guest Wi-Fi called in the {o_en} office?"],
               [f"{o_zh}办公室的访客 Wi-Fi 叫什么？"])
        g.fact(doc, lang, f"room {room}" if en else f"{room} 室", "faq.badge",
               [f"Where do new hires in {o_en} get their access badge?"],
               [f"{o_zh}办公室的新员工去哪里领门禁卡？"])
        g.fact(doc, lang, printer, "faq.printer",
               [f"Which print queue should I use in the {o_en} office?"],
               [f"在{o_zh}办公室打印应该选哪个打印队列？"])


def _tables(g: _Gen, services: list[tuple[str, str]]) -> None:
    r = g.rng
    rows = []
    for name, other, _ in EN_OFFICES:
        phone = g.unique(lambda: f"+{r.randrange(1, 99)} {r.randrange(10, 99)} {r.randrange(100, 999)} "
                                 f"{r.randrange(1000, 9999)}")
        rows.append((name, other, phone, f"{r.randrange(1, 200)} {r.choice(['Harbour', 'Market', 'Station', 'Park', 'King'])} "
                     f"{r.choice(['Street', 'Road', 'Avenue', 'Quay'])}, floor {r.randrange(2, 30)}", g.person("en")))
    doc = g.add("office-directory.csv", KB_COMPANY, "en", "table", csv_bytes(
        ["Office", "Address", "Reception phone", "Facilities manager"],
        [[n, addr, phone, mgr] for n, _, phone, addr, mgr in rows]))
    for n, other, phone, _, _ in rows[: g.count(9, 3)]:
        g.fact(doc, "en", phone, "csv.reception_phone",
               [f"What is the reception phone number of the {n} office?"],
               [f"{other}办公室前台电话是多少？"])
    zh_rows = []
    for name, other in ZH_OFFICES:
        phone = g.unique(lambda: f"0{r.randrange(10, 999)}-{r.randrange(1000, 9999)}{r.randrange(1000, 9999)}")
        zh_rows.append((name, other, phone, f"{name}市{r.choice(['高新', '滨江', '科技园', '中关村', '天府'])}区"
                        f"{r.choice(['创新', '科苑', '文三', '望京', '金融'])}路 {r.randrange(1, 300)} 号 {r.randrange(2, 30)} 层",
                        g.person("zh")))
    doc = g.add("办公室通讯录.csv", KB_COMPANY, "zh", "table", csv_bytes(
        ["办公室", "地址", "前台电话", "行政负责人"], [[n, addr, phone, mgr] for n, _, phone, addr, mgr in zh_rows]))
    for n, other, phone, _, _ in zh_rows[: g.count(10, 3)]:
        g.fact(doc, "zh", phone, "csv.reception_phone",
               [f"What is the front desk number of the {other} office?"],
               [f"{n}办公室前台电话多少？", f"怎么打电话给{n}办公室前台？"])
    contracts = []
    for _ in range(g.count(45, 5)):
        vendor = g.unique(lambda: f"{r.choice(VENDOR_A)} {r.choice(VENDOR_B)}")
        ends = g.date(dt.date(2025, 6, 1), 900)
        contracts.append([vendor, r.choice(["facilities", "IT hardware", "software licences", "travel agency",
                                            "legal advice", "recruiting", "catering", "telecom"]),
                          ends.isoformat(), g.person("en"), f"+1 555 0{r.randrange(100, 999)}"])
    doc = g.add("vendor-contracts.csv", KB_COMPANY, "en", "table", csv_bytes(
        ["Vendor", "Category", "Contract ends", "Account manager", "Phone"], contracts))
    for row in contracts[: g.count(20, 2)]:
        g.fact(doc, "en", row[2], "csv.contract_end",
               [f"When does our contract with {row[0]} run out?"], [f"和 {row[0]} 的合同什么时候到期？"])
    assets = []
    for i in range(g.count(320, 20)):
        lang = r.choice(["en", "zh"])
        office = r.choice(EN_OFFICES)[0] if lang == "en" else r.choice(ZH_OFFICES)[0]
        assets.append([f"AT-{100000 + i * 7 + r.randrange(7)}", r.choice(["Laptop", "Monitor", "Phone",
                       "Docking station", "Tablet"]), r.choice(BRANDS) + f" {r.randrange(10, 99)}",
                       g.person(lang), office, g.date(dt.date(2021, 1, 1), 1400).isoformat()])
    g.add("asset-inventory.csv", KB_COMPANY, "en", "table", csv_bytes(
        ["Asset tag", "Type", "Model", "Assigned to", "Office", "Purchased"], assets))
    rota = []
    for week in range(g.count(60, 4)):
        svc = services[week % len(services)][0]
        lang = r.choice(["en", "zh"])
        rota.append([f"2025-W{week % 52 + 1:02d}", svc, g.person(lang), g.person(lang)])
    g.add("oncall-rota.csv", KB_ENGINEERING, "en", "table", csv_bytes(
        ["Week", "Service", "Primary", "Secondary"], rota))


def _pages(g: _Gen) -> None:
    picks = [(o, "en") for o in g.rng.sample(EN_OFFICES, 3)] + [(o, "zh") for o in g.rng.sample(ZH_OFFICES, 3)]
    for office, lang in picks[: g.count(6, 2)]:
        move = g.date(dt.date(2025, 4, 1), 200)
        floor = g.rng.randrange(3, 30)
        if lang == "en":
            name, other = office[0], office[1]
            paragraphs = [
                f"The {name} office is moving. From {en_date(move)} we work from our new space on "
                f"floor {floor} of the Riverside building, ten minutes' walk from the current office.",
                "The move happens over the weekend before. Please pack your desk into the crates "
                "provided by Thursday evening and label them with your name.",
                "Meeting rooms in the new space are named after rivers. The booking system is updated "
                "on the Friday before the move.",
                "Parking moves too: the new garage is under the building and uses the same badge.",
                "Questions about the move go to the facilities team.",
            ]
            doc = g.add(f"news-{name.lower()}-office-move.html", KB_COMPANY, "en", "page",
                        html_page(f"{name} office move", f"The {name} office moves on {en_date(move)}",
                                  paragraphs, "en"))
            g.fact(doc, "en", en_date(move), "page.move",
                   [f"When does the {name} office move to the new building?"],
                   [f"{other}办公室什么时候搬到新楼？"])
        else:
            name, other = office
            paragraphs = [
                f"{name}办公室将于 {zh_date(move)} 起迁至滨江大厦 {floor} 层办公，新址距离现办公室步行约十分钟。",
                "搬迁在前一个周末进行，请于周四下班前将个人物品装入统一发放的周转箱，并贴好姓名标签。",
                "新办公区的会议室以河流命名，会议室预订系统将在搬迁前的周五更新。",
                "停车场同步搬迁，新停车场位于大厦地下，使用原门禁卡进出。",
                "搬迁相关问题请联系行政部。",
            ]
            doc = g.add(f"news-{other.lower().replace(chr(39), '')}-office-move.html", KB_COMPANY, "zh",
                        "page", html_page(f"关于{name}办公室搬迁的通知", f"关于{name}办公室搬迁的通知",
                                          paragraphs, "zh"))
            g.fact(doc, "zh", zh_date(move), "page.move",
                   [f"When is the {other} office moving?"], [f"{name}办公室哪天搬家？"])


DEPARTMENTS = [("Sales", "销售部"), ("Customer Support", "客户服务部"), ("Engineering", "研发部"),
               ("Finance", "财务部"), ("Marketing", "市场部"), ("Operations", "运营部"),
               ("People", "人力资源部"), ("Legal", "法务部")]
WEEKDAYS = [("Monday", "周一"), ("Tuesday", "周二"), ("Wednesday", "周三"), ("Thursday", "周四"),
            ("Friday", "周五")]
HANDBOOK_SECTIONS = (["Who we are", "How we work", "Meetings", "Tools", "Security", "Your first weeks",
                      "Career growth", "Working with other teams", "Customers", "Getting help"],
                     ["部门介绍", "工作方式", "会议安排", "常用工具", "信息安全", "入职头几周", "职业发展",
                      "跨部门协作", "客户", "寻求帮助"])


def _handbooks(g: _Gen) -> None:
    """Long department handbooks: prose sections that fill whole 256-token chunks."""
    for i in range(g.count(8, 1)):
        lang = "en" if i % 2 == 0 else "zh"
        en = lang == "en"
        k = 0 if en else 1
        sep = " " if en else ""
        dept = DEPARTMENTS[i % len(DEPARTMENTS)]
        name = dept[0] if en else dept[1]
        prose = [s for s in POLICY_FILLER[k] + MEETING_FILLER[k] + RUNBOOK_FILLER[k] + PRODUCT_OVERVIEW[k]
                 if "{" not in s]
        day, time_ = g.rng.choice(WEEKDAYS), f"{g.rng.randrange(9, 17)}:{g.rng.choice(['00', '30'])}"
        course_days = g.rng.choice([10, 20, 30, 45, 60])
        sections = []
        for s_i, heading in enumerate(HANDBOOK_SECTIONS[k]):
            paragraphs = []
            for _ in range(g.rng.randrange(3, 6)):
                paragraphs.append(sep.join(g.some(prose, g.rng.randrange(5, 8))))
            if s_i == 2:
                paragraphs.insert(1, f"The {name} all-hands meeting takes place every {day[0]} at {time_}; "
                                     "the agenda goes out the day before." if en else
                                  f"{name}全员会固定在每{day[1]} {time_} 召开，会前一天发出议程。")
            if s_i == 5:
                paragraphs.insert(2, f"New joiners in {name} finish the mandatory security course "
                                     f"within {course_days} days of their start date." if en else
                                  f"{name}新员工须在入职后 {course_days} 天内完成必修的信息安全课程。")
            sections.append((heading, paragraphs))
        title = f"{name} Handbook" if en else f"{name}员工手册"
        slug = dept[0].lower().replace(" ", "-")
        doc = g.add(f"handbook-{slug}-{lang}.md", KB_COMPANY, lang, "handbook", markdown(title, sections))
        d_en, d_zh = dept
        g.fact(doc, lang, f"every {day[0]} at {time_}" if en else f"每{day[1]} {time_}", "handbook.allhands",
               [f"When is the {d_en} department's all-hands meeting?"],
               [f"{d_zh}的全员会是什么时候开？"])
        g.fact(doc, lang, f"within {course_days} days" if en else f"{course_days} 天内", "handbook.course",
               [f"How long do new {d_en} employees have to complete the security course?"],
               [f"{d_zh}新员工要在多少天内学完信息安全课程？"])


def build(seed: int = 20251125, scale: float = 1.0) -> Corpus:
    """The corpus for `seed` at `scale` (1.0 is about 2,400 chunks at 256 tokens)."""
    g = _Gen(seed, scale)
    products = _products(g)
    for p in products:
        _product_sheet(g, p)
    for p in products[: g.count(24, 2)]:
        _product_faq(g, p)
    _price_lists(g, products)
    _policies(g)
    services = _runbooks(g)
    _meetings(g, products)
    _office_faqs(g)
    _tables(g, services)
    _pages(g)
    _handbooks(g)
    return Corpus(tuple(g.docs), tuple(g.facts), seed)
